"""The queue on Redis (see TaskQueue in engine/ports): a sorted set per partition (score
-priority, member `<create micros>:<task id>`), leases, cancel requests."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from mcp_sdk.proto import task_pb2
from mcp_server.engine.ports import Kept
from mcp_server.errors import NotFound, Unavailable
from mcp_server.state.common import (
    QUEUE_LENGTH_CACHE_SECONDS,
    CreateTask,
    QueueFull,
    RequestIdReused,
    assemble,
    fixed_part,
    live_part,
    mark_cancelled,
    now_seconds,
    request_task_id,
    rerun_dedupe_key,
)
from mcp_server.state.redis import queue_lua as lua
from mcp_server.state.redis.connection import BACKSTOP_MS, RedisConnection
from mcp_server.state.redis.streams import StreamHub
from mcp_server.state.redis.tasks import RedisTasks

PENDING, RUNNING, WAITING = task_pb2.TASK_STATUS_PENDING, task_pb2.TASK_STATUS_RUNNING, task_pb2.TASK_STATUS_WAITING


class RedisQueue(CreateTask):
    """TaskQueue on Redis."""

    def __init__(self, conn: RedisConnection, hub: StreamHub, tasks: RedisTasks) -> None:
        self.conn = conn
        self.layout = conn.layout
        self.hub = hub
        self.tasks = tasks  # reads the task a repeated request_id names
        self._create = conn.register(lua.CREATE_TASK)
        self._create_rerun = conn.register(lua.CREATE_RERUN)
        self._claim = conn.register(lua.CLAIM_TASKS)
        self._renew = conn.register(lua.RENEW_LEASES)
        self._release = conn.register(lua.RELEASE_EXPIRED)
        self._cancel = conn.register(lua.CANCEL_PENDING)
        self._claim_waiting = conn.register(lua.CLAIM_WAITING)
        self._queue_length: tuple[float, int] = (0.0, 0)

    async def create_leased(
        self,
        task: task_pb2.Task,
        event: task_pb2.TaskEvent,
        holder: str,
        lease_seconds: float,
        max_queue: int = 0,
        fingerprint: str = "",
        values: Mapping[str, bytes] | None = None,
        kept: Kept | None = None,
    ) -> tuple[task_pb2.Task, bool, int]:
        """A task with a request_id has an id derived from its owner and request_id, so the
        dedupe is the task's own key; without one, a second run of the script (a lost reply)
        finds the task it made and says so. A rerun's id puts it in its source's partition, so
        that one script writes it, links it to the values it shares and lists it as a rerun."""
        if kept is not None:
            task.task_id = event.task_id = await self._rerun_id(task, kept.source_task_id)
        elif task.request_id:  # the idempotency key: the task's own id, in its owner's namespace
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
        script_keys = [
            keys.header,
            keys.events,
            self.layout.queue(partition),
            keys.values,
            self.layout.leases(partition),
            *self.layout.indexes_of(partition, task.status, task.owner, task.workflow_id),
        ]
        if kept is None:
            for digest, data in (values or {}).items():
                args += [digest, data]
            created, detail = await self.conn.write(self._create, script_keys, args)
        else:
            source = self.layout.task(kept.source_task_id)
            script_keys += [keys.steps, keys.order, keys.links, source.header, source.reruns]
            args += [self.layout.task_prefix(partition), kept.source_task_id, len(values or {})]
            for digest, data in (values or {}).items():
                args += [digest, data]
            args.append(len(kept.records))
            for record in kept.records:
                args += [record.index, record.path, record.data]
            args += list(kept.digests)
            created, detail = await self.conn.write(self._create_rerun, script_keys, args)
            if created == -1:
                raise NotFound(
                    f"task {kept.source_task_id}: {detail.decode()} was purged meanwhile",
                    reason="TASK_NOT_FOUND",
                    metadata={"task_id": kept.source_task_id},
                )
        if created:
            self.hub.written(keys.events, [event], writer=bool(holder))
            if not holder:  # queued: counts against the limit before the next count
                taken, length = self._queue_length
                self._queue_length = (taken, length + 1)
            return task, True, int(detail)
        if not task.request_id:  # our own earlier try: the lease (if any) was granted then
            return task, True, 1 if holder else 0
        if detail.decode() != fingerprint:
            raise RequestIdReused(task.request_id, task.task_id)
        existing = await self.tasks.get_task(task.task_id)
        if existing is None:
            raise Unavailable(f"task {task.task_id} was purged while it was being read; submit again")
        return existing, False, 0

    async def _rerun_id(self, task: task_pb2.Task, source_task_id: str) -> str:
        """An id in the source's partition: at random, or from the request_id, one per partition
        (the same each try, so the dedupe is the task's own key, as for a submission). The same
        request_id for a rerun of another task (in another partition) is refused, as on SQLite."""
        partition = self.layout.partition_of(source_task_id)
        if not task.request_id:
            while True:
                candidate = uuid.uuid4().hex
                if self.layout.partition_of(candidate) == partition:
                    return candidate
        ids = self._request_ids(task.owner, rerun_dedupe_key(task.request_id))
        others = [ids[p] for p in range(self.layout.partitions) if p != partition]
        async with self.conn.pipeline(transaction=False) as pipe:
            for other in others:
                pipe.exists(self.layout.task(other).header)
            found = await self.conn.do(pipe.execute())
        for other, exists in zip(others, found):
            if exists:
                raise RequestIdReused(task.request_id, other)
        return ids[partition]

    def _request_ids(self, owner: str, dedupe: str) -> dict[int, str]:
        """For each partition, the first of the ids derived from (owner, dedupe, 0, 1, ...) that lands there."""
        ids: dict[int, str] = {}
        attempt = 0
        while len(ids) < self.layout.partitions:
            candidate = request_task_id(owner, f"{dedupe}\0{attempt}")
            ids.setdefault(self.layout.partition_of(candidate), candidate)
            attempt += 1
        return ids

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
        reply = await self.conn.do(
            self._claim(
                keys=[self.layout.queue(best), self.layout.leases(best), self.layout.due(best)],
                args=[
                    int((now_seconds() + lease_seconds) * 1000),
                    owner,
                    self.layout.task_prefix(best),
                    count,
                    bound,
                    PENDING,
                    RUNNING,
                    WAITING,
                ],
            )
        )
        return [(assemble(reply[i], reply[i + 1]), int(reply[i + 2])) for i in range(0, len(reply), 3)]

    async def claim_waiting(self, task_id: str, owner: str, lease_seconds: float) -> tuple[task_pb2.Task, int] | None:
        partition = self.layout.partition_of(task_id)
        reply = await self.conn.do(
            self._claim_waiting(
                keys=[
                    self.layout.task(task_id).header,
                    self.layout.leases(partition),
                    self.layout.queue(partition),
                    self.layout.due(partition),
                ],
                args=[task_id, owner, int((now_seconds() + lease_seconds) * 1000), WAITING],
            )
        )
        return (assemble(reply[0], reply[1]), int(reply[2])) if reply else None

    async def _queue_heads(self) -> dict[int, tuple[float, bytes]]:
        """Each non-empty partition's first entry: (-priority, `<create micros>:<task id>`)."""
        async with self.conn.pipeline(transaction=False) as pipe:
            for partition in range(self.layout.partitions):
                pipe.zrange(self.layout.queue(partition), 0, 0, withscores=True)
            replies = await self.conn.do(pipe.execute())
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
        replies = await self.conn.scripts(
            [
                (
                    self._renew,
                    [self.layout.leases(partition)],
                    [expiry, self.layout.task_prefix(partition), *pairs],
                )
                for partition, pairs in by_partition.items()
            ]
        )
        return [t.decode() for lost in replies for t in lost]

    async def release_expired_leases(self) -> int:
        now_ms = int(now_seconds() * 1000)
        replies = await self.conn.scripts(
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

    async def queue_depth_by_priority(self, sample: int = 10_000) -> dict[int, int]:
        """Counts per priority over the first `sample` queued tasks in all (exact below that)."""
        each = max(1, sample // self.layout.partitions)
        async with self.conn.pipeline(transaction=False) as pipe:
            for p in range(self.layout.partitions):
                pipe.zrange(self.layout.queue(p), 0, each - 1, withscores=True)
            replies = await self.conn.do(pipe.execute())
        depth: dict[int, int] = {}
        for entries in replies:
            for _, score in entries:
                depth[int(-score)] = depth.get(int(-score), 0) + 1
        return depth

    async def queue_length(self) -> int:
        async with self.conn.pipeline(transaction=False) as pipe:
            for p in range(self.layout.partitions):
                pipe.zcard(self.layout.queue(p))
            return sum(int(n) for n in await self.conn.do(pipe.execute()))

    async def cancel_pending(self, task_id: str, event: task_pb2.TaskEvent) -> task_pb2.Task | None:
        """Compare-and-set: the cancel applies only if the task is still queued and unchanged
        since it was read (else it is read again)."""
        partition = self.layout.partition_of(task_id)
        keys = self.layout.task(task_id)
        for _ in range(20):
            fixed, live, status, sequence = await self.conn.do(self.conn.r.hmget(keys.header, "f", "v", "st", "seq"))
            if fixed is None or int(status) != PENDING:
                return None
            task = assemble(fixed, live)
            numbered = mark_cancelled(task, event)
            done = await self.conn.do(
                self._cancel(
                    keys=[
                        keys.header,
                        self.layout.queue(partition),
                        keys.events,
                        self.layout.expiry(partition),
                    ],
                    args=[
                        live_part(task),
                        task.status,
                        numbered.sequence,
                        numbered.SerializeToString(),
                        self.conn.retention_ms,
                        BACKSTOP_MS,
                        self.layout.index_prefix(partition),
                        task_id,
                        sequence,
                        PENDING,
                    ],
                )
            )
            if done:
                self.hub.written(keys.events, [numbered], writer=False)
                return task
        return None

    async def request_cancel(self, task_id: str, reason: str) -> None:
        partition = self.layout.partition_of(task_id)
        async with self.conn.pipeline(transaction=True) as pipe:
            pipe.hset(self.layout.task(task_id).header, "cx", reason)
            pipe.zadd(self.layout.cancels(partition), {task_id: int(now_seconds() * 1000)})
            await self.conn.do(pipe.execute())

    async def cancel_requests(self, task_ids: Sequence[str]) -> dict[str, str]:
        """The cancel requests among `task_ids`. Reads each partition's pending requests (one
        small read per partition, however many tasks run here), then the reasons of ours."""
        if not task_ids:
            return {}
        async with self.conn.pipeline(transaction=False) as pipe:
            for partition in range(self.layout.partitions):
                pipe.zrange(self.layout.cancels(partition), 0, 999)
            pending = {raw.decode() for reply in await self.conn.do(pipe.execute()) for raw in reply}
        ours = [task_id for task_id in task_ids if task_id in pending]
        if not ours:
            return {}
        async with self.conn.pipeline(transaction=False) as pipe:
            for task_id in ours:
                pipe.hget(self.layout.task(task_id).header, "cx")
            reasons = await self.conn.do(pipe.execute())
        return {task_id: reason.decode() for task_id, reason in zip(ours, reasons) if reason}
