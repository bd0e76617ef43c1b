"""Task records, steps, values and events on Redis (see TaskStore in engine/ports).

Reads assemble a task from its fixed and live parts; step records and large values are read
only when asked for. Event logs are Redis Streams whose entry IDs are `0-<sequence>`, so one
blocking XREAD per partition follows every watched task of a replica live (streams.py)."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

from mcp_sdk.proto import task_pb2
from mcp_server.engine.ports import Checkpoint, Deletion, StepRecord, TaskFilter, TaskPage
from mcp_server.errors import FieldViolation, InvalidArgument, task_not_found
from mcp_server.state.common import (
    EVENTS_PAGE,
    EVENTS_PAGE_BYTES,
    TERMINAL,
    assemble,
    now_seconds,
    page_is_full,
)
from mcp_server.state.redis import tasks_lua as lua
from mcp_server.state.redis.connection import BACKSTOP_MS, RedisConnection
from mcp_server.state.redis.label_index import LabelIndexer
from mcp_server.state.redis.retention import RetentionKeeper
from mcp_server.state.redis.streams import StreamHub


class RedisTasks:
    """TaskStore on Redis."""

    def __init__(self, conn: RedisConnection, hub: StreamHub) -> None:
        self.conn = conn
        self.layout = conn.layout
        self.hub = hub
        self._checkpoint = conn.register(lua.CHECKPOINT)
        self._purge = conn.register(lua.PURGE_FINISHED)
        self._delete = conn.register(lua.DELETE_FINISHED)
        self._read_linked = conn.register(lua.READ_LINKED)
        self._read_steps = conn.register(lua.READ_STEPS)
        self._read_events = conn.register(lua.READ_EVENTS)
        self.retention = RetentionKeeper(conn)
        self.labels = LabelIndexer(conn)

    async def get_task(self, task_id: str) -> task_pb2.Task | None:
        """Read on every watch start and GetTask: through the lane when there is one."""
        header = self.layout.task(task_id).header
        reply = (
            self.conn.lane.call("HMGET", header, "f", "v")
            if self.conn.lane is not None
            else self.conn.r.hmget(header, "f", "v")
        )
        fixed, live = await self.conn.do(reply)
        return assemble(fixed, live) if fixed is not None else None

    async def list_tasks(self, page_size: int, page_token: str, where: TaskFilter) -> TaskPage:
        """Newest first, merged from the partitions' indexes: a page reads about `page_size`
        entries per index it needs, never every task. The token is the (creation time, task id)
        of the last task returned, so pages stay stable while tasks arrive or are purged."""
        cursor = _decode_cursor(page_token)
        keys, filtering = self._indexes_for(where)
        found: list[tuple[tuple[float, str], task_pb2.Task]] = []
        total = -1
        while len(found) <= page_size:
            want = page_size + 1 - len(found) if not filtering else 4 * (page_size + 1)
            entries, counted = await self._index_entries(keys, cursor, want, total < 0, where)
            total = counted if total < 0 else total
            if not entries:
                break
            rows = await self._headers([task_id for _, task_id in entries])
            for entry, (fixed, live, _) in zip(entries, rows):
                cursor = entry
                if fixed is None:
                    continue  # purged since it was indexed
                task = assemble(fixed, live)
                if filtering and not _matches(task, where):
                    continue  # what the index it was read from does not tell apart
                found.append((entry, task))
                if len(found) > page_size:
                    break
            if len(entries) < want:
                break
        page = found[:page_size]
        return TaskPage(
            [task for _, task in page],
            [_encode_cursor(entry) for entry, _ in page],
            len(found) > page_size,
            0 if filtering else total,
        )

    def _indexes_for(self, where: TaskFilter) -> tuple[list[str], bool]:
        """The indexes a listing reads (every partition's), and whether what they hold must be
        filtered further: no index has both an owner and a workflow, nor a label and anything else."""
        partitions = range(self.layout.partitions)
        if where.labels:
            key, value = where.labels[0]
            alone = len(where.labels) == 1 and not (where.statuses or where.owner or where.workflow_id)
            return [self.layout.label_index(p, key, value) for p in partitions], not alone
        owner = where.owner or None
        workflow = where.workflow_id if where.workflow_id and owner is None else None
        keys = [self.layout.index(p, s, owner, workflow) for p in partitions for s in where.statuses or (0,)]
        return keys, bool(owner and where.workflow_id)

    async def _index_entries(
        self, keys: list[str], after: tuple[float, str] | None, want: int, count: bool, where: TaskFilter
    ) -> tuple[list[tuple[float, str]], int]:
        """The `want` newest entries of the union of `keys` strictly after `after` and created
        within `where`'s times (an entry's score is its creation time in microseconds), and (if
        asked) how many entries the keys hold within those times."""
        top = f"({where.created_before_us}" if where.created_before_us else "+inf"
        low = str(where.created_after_us) if where.created_after_us else "-inf"
        high = top  # the read starts at the cursor or the upper bound, whichever is lower
        if after is not None and not (where.created_before_us and where.created_before_us <= after[0]):
            high = repr(after[0])
        ties = 16  # entries created in the same microsecond as the cursor, skipped below
        async with self.conn.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.zrevrangebyscore(key, high, low, start=0, num=want + ties, withscores=True)
            if count:
                for key in keys:
                    if where.created_after_us or where.created_before_us:
                        pipe.zcount(key, low, top)
                    else:
                        pipe.zcard(key)
            replies = await self.conn.do(pipe.execute())
        merged = {(score, raw.decode()) for reply in replies[: len(keys)] for raw, score in reply}
        if after is not None:
            merged = {e for e in merged if e[0] < after[0] or (e[0] == after[0] and e[1] < after[1])}
        total = sum(int(n) for n in replies[len(keys) :]) if count else 0
        return sorted(merged, reverse=True)[:want], total

    async def _headers(self, task_ids: list[str]) -> list[Any]:
        async with self.conn.pipeline(transaction=False) as pipe:
            for task_id in task_ids:
                pipe.hmget(self.layout.task(task_id).header, "f", "v", "wf")
            return list(await self.conn.do(pipe.execute()))

    async def read_steps(self, task_id: str, start: int, limit: int) -> list[StepRecord]:
        """In batches of a thousand, each one script run (through the lane: a resumed run reads its
        steps this way)."""
        keys = self.layout.task(task_id)
        records: list[StepRecord] = []
        while len(records) < limit:
            want = min(1000, limit - len(records))
            reply = await self.conn.do(
                self.conn.script(self._read_steps, [keys.order, keys.steps], [start + len(records), want])
            )
            records += [StepRecord(int(reply[i]), reply[i + 1].decode(), reply[i + 2]) for i in range(0, len(reply), 3)]
            if len(reply) < 3 * want:
                break
        return records

    async def labelled(self, labels: Sequence[tuple[str, str]]) -> bool:
        """One EXISTS over every partition's index of each label (on a cluster, one per slot, together)."""
        keys = [self.layout.label_index(p, key, value) for key, value in labels for p in range(self.layout.partitions)]
        if not self.conn.cluster:
            return bool(await self.conn.do(self.conn.r.exists(*keys)))
        async with self.conn.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.exists(key)
            return any(await self.conn.do(pipe.execute()))

    async def reruns_of(self, task_id: str, limit: int) -> list[str]:
        found = await self.conn.do(self.conn.r.zrange(self.layout.task(task_id).reruns, 0, limit - 1))
        return [t.decode() for t in found]

    async def read_step(self, task_id: str, path: str) -> StepRecord | None:
        data = await self.conn.do(self.conn.r.hget(self.layout.task(task_id).steps, path))
        if data is None:
            return None
        return StepRecord(-1, path, data)

    async def read_values(self, task_id: str, digests: Sequence[str]) -> dict[str, bytes]:
        if not digests:
            return {}
        keys = self.layout.task(task_id)
        found = await self.conn.do(self.conn.r.hmget(keys.values, list(digests)))
        values = {d: v for d, v in zip(digests, found) if v is not None}
        if len(values) < len(digests):  # a rerun's: shared with the task that holds them
            missing = [d for d in digests if d not in values]
            prefix = self.layout.task_prefix(self.layout.partition_of(task_id))
            linked = await self.conn.do(
                self.conn.script(self._read_linked, [keys.values, keys.links], [prefix, *missing])
            )
            values.update({d: v for d, v in zip(missing, linked) if v})
        return values

    async def save_checkpoint(self, checkpoint: Checkpoint) -> None:
        partition = self.layout.partition_of(checkpoint.task_id)
        keys = self.layout.task(checkpoint.task_id)
        waiting = checkpoint.status == task_pb2.TASK_STATUS_WAITING
        args: list[Any] = [
            checkpoint.lease_token,
            checkpoint.live,
            checkpoint.status,
            int(checkpoint.status in TERMINAL),
            self.conn.retention_ms,
            BACKSTOP_MS,
            self.layout.index_prefix(partition),
            checkpoint.task_id,
            int(waiting),
            checkpoint.due_ms if waiting else 0,
            self.layout.event_waits(partition),
            len(checkpoint.steps),
        ]
        for step in checkpoint.steps:
            args += [step.index, step.path, step.data]
        args.append(len(checkpoint.values))
        for digest, data in checkpoint.values.items():
            args += [digest, data]
        args.append(len(checkpoint.waits))
        for path, record in checkpoint.waits.items():
            args += [path, record.encode() if record is not None else ""]
        args.append(len(checkpoint.signals_taken))
        for index, (sequence, assigned) in checkpoint.signals_taken.items():
            args += [index, f"{sequence}|{assigned}"]
        for event in checkpoint.events:
            args += [event.sequence, event.SerializeToString()]
        await self.conn.write(
            self._checkpoint,
            [
                *keys.all,
                self.layout.leases(partition),
                self.layout.ends(partition),
                self.layout.cancels(partition),
                keys.signals,
                keys.waits,
                self.layout.due(partition),
                self.layout.signals_pending(partition),
                self.layout.queue(partition),
            ],
            args,
        )
        # a run that parked writes no more here: the task may resume on another replica (an ended
        # one stays marked: nothing follows its last event, and a watcher here stops there)
        self.hub.written(keys.events, checkpoint.events, writer=checkpoint.status != task_pb2.TASK_STATUS_WAITING)

    async def read_events(
        self, task_id: str, after_sequence: int, limit: int = EVENTS_PAGE
    ) -> list[task_pb2.TaskEvent]:
        key = self.layout.task(task_id).events
        found = await self.conn.do(
            self.conn.script(self._read_events, [key], [f"(0-{after_sequence}", limit, EVENTS_PAGE_BYTES])
        )
        return [task_pb2.TaskEvent.FromString(data) for data in found]

    async def wait_events(self, task_id: str, after_sequence: int, timeout: float) -> list[task_pb2.TaskEvent]:
        """Events after `after_sequence`, waiting up to `timeout` for one. However many watchers
        follow a partition's tasks on this replica, one blocking XREAD follows all of them (see
        streams.StreamHub)."""
        key = self.layout.task(task_id).events
        partition = self.layout.partition_of(task_id)
        if not self.hub.covers(key, after_sequence):
            # Follow first, then read: what is written meanwhile reaches the hub, what was written
            # before is in the read, so no event falls between the two.
            await self.hub.follow(key, partition, after_sequence, reading=True)
            try:
                events = await self.read_events(task_id, after_sequence, EVENTS_PAGE)
            except BaseException:
                self.hub.feed(key, [])
                raise
            if page_is_full(events):  # more may be stored after this page: read on from there next time
                self.hub.feed(key, [])  # the read is over; the log cannot continue from it
                self.hub.followers.unfollow(key)
                return events
            self.hub.feed(key, events)
            if events:
                return events
        followed = await self.hub.wait(key, partition, after_sequence, timeout)
        return await self.read_events(task_id, after_sequence) if followed is None else followed

    async def purge_finished(self) -> int:
        """Delete the tasks whose retention ran out, with their index entries."""
        self.retention.agree()
        self.labels.start()
        now_ms = int(now_seconds() * 1000)
        replies = await self.conn.scripts(
            [
                (
                    self._purge,
                    [self.layout.expiry(p), self.layout.queue(p), self.layout.ends(p)],
                    [now_ms, self.layout.task_prefix(p), self.layout.index_prefix(p), self.conn.retention_ms],
                )
                for p in range(self.layout.partitions)
            ]
        )
        return sum(int(n) for n in replies)

    async def delete_finished(self, task_id: str) -> Deletion:
        partition = self.layout.partition_of(task_id)
        keys = self.layout.task(task_id)
        args = [self.layout.task_prefix(partition), self.layout.index_prefix(partition), task_id, *TERMINAL]
        layout = self.layout
        script_keys = [layout.expiry(partition), layout.queue(partition), keys.header, layout.ends(partition)]
        done = int(await self.conn.write(self._delete, script_keys, args))
        if done == 1:
            self.hub.forget(keys.events, task_not_found(task_id))
            return Deletion.DELETED
        return Deletion.MISSING if done == 0 else Deletion.NOT_FINISHED

    def forget_log_before(self, task_id: str, created_ns: int) -> None:
        self.hub.followers.forget_before(self.layout.task(task_id).events, created_ns)


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


def _matches(task: task_pb2.Task, where: TaskFilter) -> bool:
    return (
        (not where.statuses or task.status in where.statuses)
        and (not where.owner or task.owner == where.owner)
        and (not where.workflow_id or task.workflow_id == where.workflow_id)
        and where.labels_match(task)
    )
