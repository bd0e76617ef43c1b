"""The production store: Redis through redis.asyncio, on one node or on a Redis Cluster;
several orchestrator replicas share it.

Every write that must be atomic is one Lua script on the keys of one partition (see
redis_layout.py for the keys and redis_scripts.py for the scripts): creating a task, claiming
tasks, a checkpoint (live header, changed step records, new values, events, index moves,
fenced by the lease token), a cancel, a purge. Reads assemble a task from its fixed and live
parts; step records and large values are read only when asked for. Event logs are Redis
Streams whose entry IDs are `0-<sequence>`, so `XREAD BLOCK` follows a task live from any
replica.

On a cluster (`redis-cluster://`), redis-py's RedisCluster routes each script by its keys
(all in one slot by design) and follows the cluster through failovers; calls that span
partitions go out together (a pipeline on one node, concurrent calls on a cluster). With
`wait_replicas=N`, a create and a checkpoint count as done only once N replicas have them
(WAIT, sent on the connection that wrote).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from typing import Any, cast
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import PipelineCommand, RedisCluster
from redis.exceptions import AskError, MovedError, NoScriptError, RedisClusterException, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from mcp_sdk.proto import registry_pb2, task_pb2, workflow_pb2
from mcp_server.engine.context import now
from mcp_server.engine.ports import CapacityRequest, Checkpoint, StepRecord, TaskFilter, TaskPage
from mcp_server.errors import FieldViolation, InvalidArgument, LeaseLost, Unavailable
from mcp_server.state import redis_scripts as lua
from mcp_server.state.common import (
    EVENTS_PAGE,
    QUEUE_LENGTH_CACHE_SECONDS,
    TERMINAL,
    CreateTask,
    QueueFull,
    RequestIdReused,
    assemble,
    decode_token,
    encode_token,
    fixed_part,
    live_part,
    mark_cancelled,
    now_seconds,
    request_task_id,
)
from mcp_server.state.redis_lane import RedisLane
from mcp_server.state.redis_layout import Layout
from mcp_server.state.redis_open import agree_on_layout, connect_cluster, connect_node, text
from mcp_server.state.redis_streams import StreamHub

PENDING, RUNNING = task_pb2.TASK_STATUS_PENDING, task_pb2.TASK_STATUS_RUNNING
# finished tasks' keys also carry a TTL this much past the retention, in case no replica purges them
BACKSTOP_MS = 3600 * 1000
# how long a write waits for its replicas (wait_replicas) before it is retried
WAIT_TIMEOUT_MS = 2000


class RedisStore(CreateTask):
    """Store backed by Redis (see Store in engine/ports.py for the contract)."""

    def __init__(
        self,
        client: aioredis.Redis | RedisCluster,
        layout: Layout,
        retention_seconds: float = 7 * 24 * 3600.0,
        wait_replicas: int = 0,
        lane: RedisLane | None = None,
    ) -> None:
        self.r: Any = client
        self.lane = lane  # the hot write scripts' own connection (single node, plain TCP); else redis-py
        self.cluster = isinstance(client, RedisCluster)
        self.wait_replicas = wait_replicas
        self.layout = layout
        self.retention_ms = max(1, int(retention_seconds * 1000))
        self._hub = StreamHub(self)
        self._create = client.register_script(lua.CREATE_TASK)
        self._checkpoint = client.register_script(lua.CHECKPOINT)
        self._claim = client.register_script(lua.CLAIM_TASKS)
        self._renew = client.register_script(lua.RENEW_LEASES)
        self._release = client.register_script(lua.RELEASE_EXPIRED)
        self._cancel = client.register_script(lua.CANCEL_PENDING)
        self._purge = client.register_script(lua.PURGE_FINISHED)
        self._latest = client.register_script(lua.LATEST_WORKFLOW)
        self._latest_version = client.register_script(lua.LATEST_VERSION)
        self._acquire = client.register_script(lua.ACQUIRE_CAPACITY)
        self._release_capacity = client.register_script(lua.RELEASE_CAPACITY)
        self._renew_capacity = client.register_script(lua.RENEW_CAPACITY)
        self._remove_entries = client.register_script(lua.REMOVE_UNCHANGED)
        self._queue_length: tuple[float, int] = (0.0, 0)

    @classmethod
    async def open(cls, url: str, retention_seconds: float = 7 * 24 * 3600.0) -> RedisStore:
        """Connect to `url`. Query parameters: `prefix=` namespaces every key (default `mcp:`),
        `partitions=` sets the partition count of a new store (default 16; an existing store
        keeps the count it was created with), `lane=off` sends the hot write scripts through
        redis-py too (see redis_lane.py). Refuses a store written with another layout."""
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        prefix = query.pop("prefix", ["mcp:"])[0]
        wanted = query.pop("partitions", [""])[0]
        wait_replicas = int(query.pop("wait_replicas", ["0"])[0])
        use_lane = query.pop("lane", ["on"])[0] != "off"
        clean = urlunsplit(parts._replace(query=urlencode(query, doseq=True)))
        client: aioredis.Redis | RedisCluster
        lane = None
        if parts.scheme == "redis-cluster":
            client = await connect_cluster(parts.netloc)
        else:
            client = await connect_node(clean, parts.netloc)
            if parts.scheme == "redis" and use_lane:
                lane = RedisLane.for_pool(client.connection_pool.connection_kwargs)
        try:
            layout = await agree_on_layout(client, prefix, int(wanted) if wanted else None)
        except BaseException:
            await client.aclose()
            raise
        return cls(client, layout, retention_seconds, wait_replicas, lane)

    async def _do(self, coro: Any) -> Any:
        try:
            return await coro
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise Unavailable(f"redis store unreachable: {exc}") from exc
        except RedisClusterException as exc:
            raise Unavailable(f"redis cluster: {exc}") from exc
        except (AttributeError, TypeError) as exc:
            # redis-py 8.1 lets a write on a connection the peer just closed (a failover, a
            # restart) escape as AttributeError or TypeError from the transport, not as a
            # ConnectionError (redis/redis-py#4287, fixed after 8.1): treat those as one.
            if not _raised_by_the_connection(exc):
                raise
            raise Unavailable(
                f"redis store unreachable: a connection closed under a command ({type(exc).__name__}: {exc})"
            ) from exc
        except ResponseError as exc:
            if "LEASE_LOST" in str(exc):
                raise LeaseLost("lease is no longer held") from exc
            raise Unavailable(f"redis store error: {exc}") from exc
        except RedisError as exc:
            raise Unavailable(f"redis store error: {exc}") from exc

    @contextlib.asynccontextmanager
    async def _pipeline(self, transaction: bool = False) -> AsyncIterator[Any]:
        """A pipeline whose errors are the store's, opening included (on a cluster, opening one
        may reach a node, and fail like any command)."""
        try:
            async with self.r.pipeline(transaction=transaction) as pipe:
                yield pipe
        except (RedisError, RedisClusterException, OSError, AttributeError, TypeError) as exc:
            await self._do(_raise(exc))

    # ---- workflows ------------------------------------------------------------------------
    async def create_workflow(self, workflow: workflow_pb2.Workflow) -> workflow_pb2.Workflow:
        stored = workflow_pb2.Workflow()
        stored.CopyFrom(workflow)
        stored.version = int(await self._do(self.r.hincrby(self.layout.workflow_versions, workflow.workflow_id, 1)))
        stored.create_time.CopyFrom(now())
        async with self._pipeline(transaction=True) as pipe:
            pipe.hset(self.layout.workflow(stored.workflow_id), str(stored.version), stored.SerializeToString())
            pipe.zadd(self.layout.workflow_ids, {stored.workflow_id: 0})
            await self._do(pipe.execute())
        return stored

    async def get_workflow(self, workflow_id: str, version: int = 0) -> workflow_pb2.Workflow | None:
        key = self.layout.workflow(workflow_id)
        if version:
            data = await self._do(self.r.hget(key, str(version)))
        else:
            data = await self._do(self._latest(keys=[key, self.layout.workflow_versions], args=[workflow_id]))
        return workflow_pb2.Workflow.FromString(data) if data else None

    async def latest_workflow_version(self, workflow_id: str) -> int:
        """Asked on every submit without a version: through the lane when there is one."""
        return int(
            await self._do(
                self._script(
                    self._latest_version,
                    [self.layout.workflow(workflow_id), self.layout.workflow_versions],
                    [workflow_id],
                )
            )
        )

    async def list_workflows(self, page_size: int, page_token: str) -> tuple[list[workflow_pb2.Workflow], str]:
        after = decode_token(page_token)
        low = f"({after}" if after else "-"
        ids = await self._do(self.r.zrangebylex(self.layout.workflow_ids, low, "+", start=0, num=page_size + 1))
        workflows = []
        for raw in ids[:page_size]:
            workflow = await self.get_workflow(raw.decode())
            if workflow is not None:
                workflows.append(workflow)
        token = encode_token(ids[page_size - 1].decode()) if len(ids) > page_size else ""
        return workflows, token

    async def delete_workflow(self, workflow_id: str) -> int:
        key = self.layout.workflow(workflow_id)
        async with self._pipeline(transaction=True) as pipe:
            pipe.hlen(key)
            pipe.delete(key)
            pipe.zrem(self.layout.workflow_ids, workflow_id)
            count, _, _ = await self._do(pipe.execute())
        return int(count)

    # ---- tasks ----------------------------------------------------------------------------
    async def create_leased(
        self,
        task: task_pb2.Task,
        event: task_pb2.TaskEvent,
        holder: str,
        lease_seconds: float,
        max_queue: int = 0,
        fingerprint: str = "",
        values: Mapping[str, bytes] | None = None,
    ) -> tuple[task_pb2.Task, bool, int]:
        """A task with a request_id has an id derived from its owner and request_id, so the
        dedupe is the task's own key; without one, a second run of the script (a lost reply)
        finds the task it made and says so."""
        if task.request_id:  # the idempotency key: the task's own id, in its owner's namespace
            task.task_id = event.task_id = request_task_id(task.owner, task.request_id)
        if max_queue and not holder and await self._cached_queue_length() >= max_queue:
            raise QueueFull(max_queue)
        partition = self.layout.partition_of(task.task_id)
        keys = self.layout.task(task.task_id)
        args: list[Any] = [
            task.task_id,
            fixed_part(task),
            live_part(task),
            task.status,
            task.priority,
            task.owner,
            task.workflow_id,
            fingerprint,
            event.SerializeToString(),
            holder,
            int((now_seconds() + lease_seconds) * 1000),
        ]
        for digest, data in (values or {}).items():
            args += [digest, data]
        created, detail = await self._written(
            self._create,
            [
                keys.header,
                keys.events,
                self.layout.queue(partition),
                keys.values,
                self.layout.leases(partition),
                *self.layout.indexes_of(partition, task.status, task.owner, task.workflow_id),
            ],
            args,
        )
        if created:
            self._hub.written(keys.events, [event], writer=bool(holder))
            if not holder:  # queued: counts against the limit before the next count
                taken, length = self._queue_length
                self._queue_length = (taken, length + 1)
            return task, True, int(detail)
        if not task.request_id:  # our own earlier try: the lease (if any) was granted then
            return task, True, 1 if holder else 0
        if detail.decode() != fingerprint:
            raise RequestIdReused(task.request_id, task.task_id)
        existing = await self.get_task(task.task_id)
        if existing is None:
            raise Unavailable(f"task {task.task_id} was purged while it was being read; submit again")
        return existing, False, 0

    async def _cached_queue_length(self) -> int:
        """The queue limit is checked against a count at most QUEUE_LENGTH_CACHE_SECONDS old
        (one round trip per tenth of a second, not per submission), plus what this replica
        queued since: under a burst the queue can pass its limit by what other replicas queue
        in that time."""
        taken, length = self._queue_length
        if time.monotonic() - taken > QUEUE_LENGTH_CACHE_SECONDS:
            length = await self.queue_length()
            self._queue_length = (time.monotonic(), length)
        return length

    async def get_task(self, task_id: str) -> task_pb2.Task | None:
        """Read on every watch start and GetTask: through the lane when there is one."""
        header = self.layout.task(task_id).header
        reply = self.lane.call("HMGET", header, "f", "v") if self.lane is not None else self.r.hmget(header, "f", "v")
        fixed, live = await self._do(reply)
        return assemble(fixed, live) if fixed is not None else None

    async def list_tasks(self, page_size: int, page_token: str, where: TaskFilter) -> TaskPage:
        """Newest first, merged from the partitions' indexes: a page reads about `page_size`
        entries per index it needs, never every task. The token is the (creation time, task id)
        of the last task returned, so pages stay stable while tasks arrive or are purged."""
        cursor = _decode_cursor(page_token)
        owner = where.owner or None
        workflow = where.workflow_id if where.workflow_id and owner is None else None
        also_workflow = where.workflow_id if owner is not None else ""  # no index has both: filter
        keys = [
            self.layout.index(p, s, owner, workflow)
            for p in range(self.layout.partitions)
            for s in where.statuses or (0,)
        ]
        found: list[tuple[tuple[float, str], task_pb2.Task]] = []
        total = -1
        while len(found) <= page_size:
            want = page_size + 1 - len(found) if not also_workflow else 4 * (page_size + 1)
            entries, counted = await self._index_entries(keys, cursor, want, count=total < 0)
            total = counted if total < 0 else total
            if not entries:
                break
            rows = await self._headers([task_id for _, task_id in entries])
            for entry, (fixed, live, task_workflow) in zip(entries, rows):
                cursor = entry
                if fixed is None or (also_workflow and (task_workflow or b"").decode() != also_workflow):
                    continue  # purged since it was indexed, or another workflow
                found.append((entry, assemble(fixed, live)))
                if len(found) > page_size:
                    break
            if len(entries) < want:
                break
        page = found[:page_size]
        return TaskPage(
            [task for _, task in page],
            [_encode_cursor(entry) for entry, _ in page],
            len(found) > page_size,
            0 if also_workflow else total,
        )

    async def _index_entries(
        self, keys: list[str], after: tuple[float, str] | None, want: int, count: bool
    ) -> tuple[list[tuple[float, str]], int]:
        """The `want` newest entries of the union of `keys` strictly after `after`, and (if
        asked) how many entries the keys hold in all."""
        high = "+inf" if after is None else repr(after[0])
        ties = 16  # entries created in the same microsecond as the cursor, skipped below
        async with self._pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.zrevrangebyscore(key, high, "-inf", start=0, num=want + ties, withscores=True)
            if count:
                for key in keys:
                    pipe.zcard(key)
            replies = await self._do(pipe.execute())
        merged = {(score, raw.decode()) for reply in replies[: len(keys)] for raw, score in reply}
        if after is not None:
            merged = {e for e in merged if e[0] < after[0] or (e[0] == after[0] and e[1] < after[1])}
        total = sum(int(n) for n in replies[len(keys) :]) if count else 0
        return sorted(merged, reverse=True)[:want], total

    async def _headers(self, task_ids: list[str]) -> list[Any]:
        async with self._pipeline(transaction=False) as pipe:
            for task_id in task_ids:
                pipe.hmget(self.layout.task(task_id).header, "f", "v", "wf")
            return list(await self._do(pipe.execute()))

    async def read_steps(self, task_id: str, start: int, limit: int) -> list[StepRecord]:
        keys = self.layout.task(task_id)
        records: list[StepRecord] = []
        batch = 1000
        while len(records) < limit:
            indexes = list(range(start + len(records), start + len(records) + min(batch, limit - len(records))))
            paths = await self._do(self.r.hmget(keys.order, [str(i) for i in indexes]))
            known = [(i, p.decode()) for i, p in zip(indexes, paths) if p is not None]
            if not known:
                break
            datas = await self._do(self.r.hmget(keys.steps, [p for _, p in known]))
            records += [StepRecord(i, p, d) for (i, p), d in zip(known, datas) if d is not None]
            if len(known) < len(indexes):
                break
        return records

    async def read_step(self, task_id: str, path: str) -> StepRecord | None:
        data = await self._do(self.r.hget(self.layout.task(task_id).steps, path))
        if data is None:
            return None
        return StepRecord(-1, path, data)

    async def read_values(self, task_id: str, digests: Sequence[str]) -> dict[str, bytes]:
        if not digests:
            return {}
        found = await self._do(self.r.hmget(self.layout.task(task_id).values, list(digests)))
        return {d: v for d, v in zip(digests, found) if v is not None}

    async def save_checkpoint(self, checkpoint: Checkpoint) -> None:
        partition = self.layout.partition_of(checkpoint.task_id)
        keys = self.layout.task(checkpoint.task_id)
        args: list[Any] = [
            checkpoint.lease_token,
            checkpoint.live,
            checkpoint.status,
            int(checkpoint.status in TERMINAL),
            self.retention_ms,
            BACKSTOP_MS,
            self.layout.index_prefix(partition),
            checkpoint.task_id,
            len(checkpoint.steps),
        ]
        for step in checkpoint.steps:
            args += [step.index, step.path, step.data]
        args.append(len(checkpoint.values))
        for digest, data in checkpoint.values.items():
            args += [digest, data]
        for event in checkpoint.events:
            args += [event.sequence, event.SerializeToString()]
        await self._written(
            self._checkpoint,
            [*keys.all, self.layout.leases(partition), self.layout.expiry(partition), self.layout.cancels(partition)],
            args,
        )
        self._hub.written(keys.events, checkpoint.events)

    async def cancel_pending(self, task_id: str, event: task_pb2.TaskEvent) -> task_pb2.Task | None:
        """Compare-and-set: the cancel applies only if the task is still queued and unchanged
        since it was read (else it is read again)."""
        partition = self.layout.partition_of(task_id)
        keys = self.layout.task(task_id)
        for _ in range(20):
            fixed, live, status, sequence = await self._do(self.r.hmget(keys.header, "f", "v", "st", "seq"))
            if fixed is None or int(status) != PENDING:
                return None
            task = assemble(fixed, live)
            numbered = mark_cancelled(task, event)
            done = await self._do(
                self._cancel(
                    keys=[keys.header, self.layout.queue(partition), keys.events, self.layout.expiry(partition)],
                    args=[
                        live_part(task),
                        task.status,
                        numbered.sequence,
                        numbered.SerializeToString(),
                        self.retention_ms,
                        BACKSTOP_MS,
                        self.layout.index_prefix(partition),
                        task_id,
                        sequence,
                        PENDING,
                    ],
                )
            )
            if done:
                self._hub.written(keys.events, [numbered], writer=False)
                return task
        return None

    async def request_cancel(self, task_id: str, reason: str) -> None:
        partition = self.layout.partition_of(task_id)
        async with self._pipeline(transaction=True) as pipe:
            pipe.hset(self.layout.task(task_id).header, "cx", reason)
            pipe.zadd(self.layout.cancels(partition), {task_id: int(now_seconds() * 1000)})
            await self._do(pipe.execute())

    async def cancel_requests(self, task_ids: Sequence[str]) -> dict[str, str]:
        """The cancel requests among `task_ids`. Reads each partition's pending requests (one
        small read per partition, however many tasks run here), then the reasons of ours."""
        if not task_ids:
            return {}
        async with self._pipeline(transaction=False) as pipe:
            for partition in range(self.layout.partitions):
                pipe.zrange(self.layout.cancels(partition), 0, 999)
            pending = {raw.decode() for reply in await self._do(pipe.execute()) for raw in reply}
        ours = [task_id for task_id in task_ids if task_id in pending]
        if not ours:
            return {}
        async with self._pipeline(transaction=False) as pipe:
            for task_id in ours:
                pipe.hget(self.layout.task(task_id).header, "cx")
            reasons = await self._do(pipe.execute())
        return {task_id: reason.decode() for task_id, reason in zip(ours, reasons) if reason}

    async def read_events(
        self, task_id: str, after_sequence: int, limit: int = EVENTS_PAGE
    ) -> list[task_pb2.TaskEvent]:
        key, start = self.layout.task(task_id).events, f"(0-{after_sequence}"
        if self.lane is None:
            entries = await self._do(self.r.xrange(key, start, "+", count=limit))
            return [task_pb2.TaskEvent.FromString(fields[b"e"]) for _, fields in entries]
        raw = await self._do(
            self.lane.call("XRANGE", key, start, "+", "COUNT", limit)
        )  # [[id, [field, value, ...]], ...]
        return [task_pb2.TaskEvent.FromString(fields[fields.index(b"e") + 1]) for _, fields in raw]

    async def wait_events(self, task_id: str, after_sequence: int, timeout: float) -> list[task_pb2.TaskEvent]:
        """Events after `after_sequence`, waiting up to `timeout` for one. However many watchers
        follow a partition's tasks on this replica, one blocking XREAD follows all of them (see
        redis_streams.StreamHub)."""
        key = self.layout.task(task_id).events
        partition = self.layout.partition_of(task_id)
        if not self._hub.covers(key, after_sequence):
            # Follow first, then read: what is written meanwhile reaches the hub, what was written
            # before is in the read, so no event falls between the two.
            await self._hub.follow(key, partition, after_sequence)
            events = await self.read_events(task_id, after_sequence, EVENTS_PAGE)
            if len(events) == EVENTS_PAGE:  # more are stored after this page: read on from there next time
                self._hub.followers.unfollow(key)
                return events
            self._hub.feed(key, events)
            if events:
                return events
        followed = await self._hub.wait(key, partition, after_sequence, timeout)
        return await self.read_events(task_id, after_sequence) if followed is None else followed

    # ---- queue and leases -----------------------------------------------------------------
    async def claim_task(self, owner: str, lease_seconds: float) -> tuple[task_pb2.Task, int] | None:
        claimed = await self.claim_tasks(owner, lease_seconds, 1)
        return claimed[0] if claimed else None

    async def claim_tasks(self, owner: str, lease_seconds: float, count: int) -> list[tuple[task_pb2.Task, int]]:
        """Claim up to `count` tasks in priority order, FIFO within a priority, as far as one look
        at the partitions' heads can tell: the partition whose head is first (highest priority,
        then oldest) gives its tasks, down to the priority of the next partition's head. Every
        partition's head is looked at on every claim, so none starves."""
        heads = await self._queue_heads()
        if not heads:
            return []
        order = sorted(heads, key=lambda p: heads[p])
        best = order[0]
        bound = repr(heads[order[1]][0]) if len(order) > 1 else "+inf"
        reply = await self._do(
            self._claim(
                keys=[self.layout.queue(best), self.layout.leases(best)],
                args=[
                    int((now_seconds() + lease_seconds) * 1000),
                    owner,
                    self.layout.task_prefix(best),
                    count,
                    bound,
                    PENDING,
                    RUNNING,
                ],
            )
        )
        return [(assemble(reply[i], reply[i + 1]), int(reply[i + 2])) for i in range(0, len(reply), 3)]

    async def _queue_heads(self) -> dict[int, tuple[float, bytes]]:
        """Each non-empty partition's first entry: (-priority, `<create micros>:<task id>`)."""
        async with self._pipeline(transaction=False) as pipe:
            for partition in range(self.layout.partitions):
                pipe.zrange(self.layout.queue(partition), 0, 0, withscores=True)
            replies = await self._do(pipe.execute())
        return {p: (reply[0][1], reply[0][0]) for p, reply in enumerate(replies) if reply}

    async def renew_leases(self, leases: Mapping[str, int], lease_seconds: float) -> list[str]:
        """Renew every lease, one script per partition, all in one round trip; return the
        tasks whose lease is no longer held."""
        if not leases:
            return []
        expiry = int((now_seconds() + lease_seconds) * 1000)
        by_partition: dict[int, list[Any]] = {}
        for task_id, token in leases.items():
            by_partition.setdefault(self.layout.partition_of(task_id), []).extend([task_id, token])
        replies = await self._scripts(
            [
                (self._renew, [self.layout.leases(partition)], [expiry, self.layout.task_prefix(partition), *pairs])
                for partition, pairs in by_partition.items()
            ]
        )
        return [t.decode() for lost in replies for t in lost]

    async def release_expired_leases(self) -> int:
        now_ms = int(now_seconds() * 1000)
        replies = await self._scripts(
            [
                (
                    self._release,
                    [self.layout.leases(p), self.layout.queue(p)],
                    [now_ms, self.layout.task_prefix(p), PENDING, RUNNING],
                )
                for p in range(self.layout.partitions)
            ]
        )
        return sum(int(n) for n in replies)

    async def purge_finished(self) -> int:
        """Delete the tasks whose retention ran out, with their index entries."""
        now_ms = int(now_seconds() * 1000)
        replies = await self._scripts(
            [
                (
                    self._purge,
                    [self.layout.expiry(p)],
                    [now_ms, self.layout.task_prefix(p), self.layout.index_prefix(p)],
                )
                for p in range(self.layout.partitions)
            ]
        )
        return sum(int(n) for n in replies)

    async def _scripts(self, calls: Sequence[tuple[Any, list[str], list[Any]]]) -> list[Any]:
        """Run one script per partition: in one pipeline on a single node, as concurrent calls
        on a cluster (redis-py routes each by its keys; scripts do not go into its pipelines)."""
        if self.cluster:
            return list(await self._do(asyncio.gather(*(script(keys=keys, args=args) for script, keys, args in calls))))
        async with self._pipeline(transaction=False) as pipe:
            for script, keys, args in calls:
                await script(keys=keys, args=args, client=pipe)
            return list(await self._do(pipe.execute()))

    def _script(self, script: Any, keys: list[str], args: list[Any]) -> Awaitable[Any]:
        """Run a script that is safe to send twice (fenced, or idempotent): through the lane when
        there is one, else redis-py."""
        if self.lane is not None:
            return self.lane.evalsha(script.sha, script.script, keys, args)
        return cast(Awaitable[Any], script(keys=keys, args=args))

    async def _written(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        """Run a write script; with wait_replicas, return only once that many replicas have it
        (WAIT must follow the write on the same connection: one pipeline to the slot's master)."""
        if not self.wait_replicas:
            return await self._do(self._script(script, keys, args))
        for _ in range(3):
            if self.cluster:
                node = self.r.get_node_from_key(keys[0])
                commands = [
                    PipelineCommand(0, "EVALSHA", script.sha, len(keys), *keys, *args),
                    PipelineCommand(1, "WAIT", self.wait_replicas, WAIT_TIMEOUT_MS),
                ]
                await self._do(node.execute_pipeline(commands))
                result, acked = commands[0].result, commands[1].result
            else:
                async with self._pipeline(transaction=False) as pipe:
                    pipe.evalsha(script.sha, len(keys), *keys, *args)
                    pipe.execute_command("WAIT", self.wait_replicas, WAIT_TIMEOUT_MS)
                    result, acked = await self._do(pipe.execute(raise_on_error=False))
            if isinstance(result, NoScriptError):
                await self._do(self.r.script_load(script.script))
                continue
            if isinstance(result, Exception):
                if self.cluster and isinstance(result, (MovedError, AskError, RedisConnectionError)):
                    await self._do(self.r.nodes_manager.initialize())  # the slot moved (a failover): look again
                    continue
                await self._do(_raise(result))
            if isinstance(acked, Exception) or int(acked) < self.wait_replicas:
                raise Unavailable(
                    f"a write reached {acked} of the {self.wait_replicas} replicas it must reach "
                    f"within {WAIT_TIMEOUT_MS} ms (wait_replicas); it is retried"
                )
            return result
        raise Unavailable("the cluster moved the slot under a write three times; it is retried")

    async def queue_depth_by_priority(self, sample: int = 10_000) -> dict[int, int]:
        """Counts per priority over the first `sample` queued tasks in all (exact below that)."""
        each = max(1, sample // self.layout.partitions)
        async with self._pipeline(transaction=False) as pipe:
            for p in range(self.layout.partitions):
                pipe.zrange(self.layout.queue(p), 0, each - 1, withscores=True)
            replies = await self._do(pipe.execute())
        depth: dict[int, int] = {}
        for entries in replies:
            for _, score in entries:
                depth[int(-score)] = depth.get(int(-score), 0) + 1
        return depth

    async def queue_length(self) -> int:
        async with self._pipeline(transaction=False) as pipe:
            for p in range(self.layout.partitions):
                pipe.zcard(self.layout.queue(p))
            return sum(int(n) for n in await self._do(pipe.execute()))

    # ---- registry -------------------------------------------------------------------------
    async def put_protocol(self, entry: registry_pb2.RegisteredProtocol) -> None:
        await self._do(
            self.r.hset(self.layout.protocols, _instance(entry), entry.SerializeToString(deterministic=True))
        )

    async def remove_protocol_entries(self, entries: Sequence[registry_pb2.RegisteredProtocol]) -> list[int]:
        if not entries:
            return []
        args: list[Any] = []
        for entry in entries:
            args += [_instance(entry), entry.SerializeToString(deterministic=True)]
        removed = await self._do(self._remove_entries(keys=[self.layout.protocols], args=args))
        return [int(index) for index in removed]

    async def delete_protocols(self, name: str = "", address: str = "") -> int:
        entries = await self.list_protocol_entries()
        doomed = [_instance(e) for e in entries if e.manifest.name == name or (address and e.address == address)]
        if not doomed:
            return 0
        return int(await self._do(self.r.hdel(self.layout.protocols, *doomed)))

    async def list_protocol_entries(self) -> list[registry_pb2.RegisteredProtocol]:
        values = await self._do(self.r.hgetall(self.layout.protocols))
        entries = [registry_pb2.RegisteredProtocol.FromString(v) for v in values.values()]
        return sorted(entries, key=lambda e: (e.manifest.name, e.address))

    async def acquire_capacity(self, request: CapacityRequest) -> str | None:
        now_ms = int(now_seconds() * 1000)
        args: list[Any] = [
            request.member,
            request.waiter_id,
            -request.priority,
            request.needs,
            now_ms,
            now_ms + int(request.wait_seconds * 1000),
            now_ms + int(request.lease_seconds * 1000),
        ]
        for address, capacity in request.candidates.items():
            args += [address, capacity]
        granted = await self._do(self._acquire(keys=list(self.layout.capacity), args=args))
        return granted.decode() if granted else None

    async def release_capacity(self, waiter_id: str, member: str) -> int:
        return int(await self._do(self._release_capacity(keys=list(self.layout.capacity), args=[member, waiter_id])))

    async def capacity_waiting(self) -> int:
        return int(await self._do(self.r.zcard(self.layout.capacity[2])))

    async def renew_capacity(self, waiter_ids: Sequence[str], lease_seconds: float) -> None:
        if waiter_ids:
            expiry = int((now_seconds() + lease_seconds) * 1000)
            await self._do(self._renew_capacity(keys=list(self.layout.capacity[:2]), args=[expiry, *waiter_ids]))

    async def capacity_in_use(self) -> dict[str, str]:
        values = await self._do(self.r.hgetall(self.layout.capacity[5]))
        return {text(k): text(v) for k, v in values.items()}

    async def put_breaker_state(self, protocol: str, state: str) -> None:
        await self._do(self.r.hset(self.layout.breakers, protocol, state))

    async def breaker_states(self) -> dict[str, str]:
        values = await self._do(self.r.hgetall(self.layout.breakers))
        return {k.decode(): v.decode() for k, v in values.items()}

    async def ping(self) -> None:
        """On a cluster, also that every slot is served (a node can answer while a slot has none)."""
        if not self.cluster:
            await self._do(self.r.ping())
            return
        info = await self._do(self.r.cluster_info(target_nodes=RedisCluster.RANDOM))
        if info.get("cluster_state") != "ok":
            assigned = info.get("cluster_slots_ok", "?")
            raise Unavailable(
                f"redis cluster state is {info.get('cluster_state')}: {assigned} of 16384 slots are served"
            )

    async def close(self) -> None:
        await self._hub.close()
        if self.lane is not None:
            await self.lane.close()
        await self.r.aclose()


def _encode_cursor(entry: tuple[float, str]) -> str:
    return base64.urlsafe_b64encode(f"{entry[0]!r}:{entry[1]}".encode()).decode().rstrip("=")


def _decode_cursor(token: str) -> tuple[float, str] | None:
    if not token:
        return None
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        score, task_id = text.split(":", 1)
        return float(score), task_id
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgument(
            "page_token is not a token this server issued",
            violations=[FieldViolation("page_token", "pass next_page_token from the previous page, unchanged")],
        ) from None


def _instance(entry: registry_pb2.RegisteredProtocol) -> str:
    """The registry's field for one instance: protocol name and address."""
    return f"{entry.manifest.name}\0{entry.address}"


async def _raise(error: Exception) -> Any:
    raise error


def _raised_by_the_connection(error: BaseException) -> bool:
    """Whether `error` was raised inside redis-py's or asyncio's connection code (not ours)."""
    frames = traceback.extract_tb(error.__traceback__)
    return bool(frames) and any(part in frames[-1].filename for part in ("/redis/", "/asyncio/"))
