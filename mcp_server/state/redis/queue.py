"""The queue on Redis (see TaskQueue in engine/ports): a sorted set per partition (score
-priority, member `<create micros>:<task id>`), leases, cancel requests."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

from mcp_sdk.proto import task_pb2
from mcp_server.engine.ports import NO_SHARE, GroupMember, Kept, LeaseReply, OwnerShare, QueueGroup, RequestedTask
from mcp_server.errors import FailedPrecondition, NotFound, ResourceExhausted, Unavailable
from mcp_server.state.common import (
    CreateTask,
    RequestIdReused,
    assemble,
    fixed_part,
    live_part,
    mark_cancelled,
    now_seconds,
    queue_deadline,
    queued_bytes,
    request_task_id,
    rerun_dedupe_key,
)
from mcp_server.state.redis import queue_lua as lua
from mcp_server.state.redis.cancel_requests import CancelRequests
from mcp_server.state.redis.connection import BACKSTOP_MS, SILENT_MASTER_GRACE, RedisConnection
from mcp_server.state.redis.fair_turns import FORGET_TURNS_MS, HEAD_TURNS, group_of, share_out
from mcp_server.state.redis.queue_room import QueueRoom
from mcp_server.state.redis.streams import StreamHub
from mcp_server.state.redis.tasks import RedisTasks

PENDING, RUNNING, WAITING = task_pb2.TASK_STATUS_PENDING, task_pb2.TASK_STATUS_RUNNING, task_pb2.TASK_STATUS_WAITING
TERMINAL_STATUSES = (task_pb2.TASK_STATUS_COMPLETED, task_pb2.TASK_STATUS_FAILED, task_pb2.TASK_STATUS_CANCELLED)


class RedisQueue(CreateTask, CancelRequests):
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
        self._depth = conn.register(lua.QUEUE_DEPTH)
        self._members = conn.register(lua.GROUP_MEMBERS)
        self._note_turns = conn.register(lua.NOTE_TURNS)
        self._request_cancel = conn.register(lua.REQUEST_CANCEL)
        self.room = QueueRoom(conn, self.queue_length)

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
        group: QueueGroup | None = None,
        follow: bool = False,
        share: OwnerShare = NO_SHARE,
    ) -> tuple[task_pb2.Task, bool, int]:
        """A task with a request_id has an id derived from its owner and request_id, so the
        dedupe is the task's own key; without one, a second run of the script (a lost reply)
        finds the task it made and says so. A rerun's id puts it in its source's partition, so
        that one script writes it, links it to the values it shares and lists it as a rerun. A
        task of a capped group goes to its group's partition (see fair_lua)."""
        group = group or QueueGroup.of_owner(task.owner)
        if kept is not None:
            partition = self.layout.partition_of(kept.source_task_id)
            if group.max_running and self.layout.partition_of(group.name) != partition:
                raise FailedPrecondition(
                    f"a rerun of task {kept.source_task_id} would have concurrency key "
                    f"{task.concurrency_key!r}, another than its source's; rerun on a version with the same key",
                    reason="CONCURRENCY_KEY_CHANGED",
                )
            task.task_id = event.task_id = await self._placed_id(task, partition, rerun_dedupe_key(task.request_id))
        elif group.max_running:
            partition = self.layout.partition_of(group.name)
            task.task_id = event.task_id = await self._placed_id(task, partition, task.request_id)
        elif task.request_id:  # the idempotency key: the task's own id, in its owner's namespace
            task.task_id = event.task_id = request_task_id(task.owner, task.request_id)
        partition = self.layout.partition_of(task.task_id)
        keys = self.layout.task(task.task_id)
        fixed = fixed_part(task)
        size = queued_bytes(fixed, values)  # the create scripts count the same (fair_lua's Q:ob)
        pending = False
        if not holder:
            try:
                pending = await self.room.check(task.owner, max_queue, share, size)
            except ResourceExhausted:
                # a client's retry of a submission that was stored is answered with its task
                if not (task.request_id and await self.conn.do(self.conn.r.exists(keys.header))):
                    raise
        queued = False
        try:
            created, detail = await self._store(
                task, fixed, event, holder, lease_seconds, fingerprint, values, kept, group
            )
            if created:
                leased = bool(holder) and int(detail) > 0  # else queued (its group is full): any replica runs it
                if follow and leased:
                    self.hub.follow_new(keys.events, partition)
                else:  # a log held of this id is an earlier task's (deleted or purged, then made again)
                    self.hub.followers.forget(keys.events)
                self.hub.written(keys.events, [event], writer=leased)
                queued = not leased  # it counts against the limits before the next count
                return task, True, int(detail)
        finally:
            self.room.stored(task.owner, size, pending, queued)
        if not task.request_id:  # our own earlier try: the lease (if any) was granted then
            return task, True, 1 if holder else 0
        if detail.decode() != fingerprint:
            raise RequestIdReused(task.request_id, task.task_id)
        existing = await self.tasks.get_task(task.task_id)
        if existing is None:
            raise Unavailable(f"task {task.task_id} was purged while it was being read; submit again")
        return existing, False, 0

    async def _store(
        self,
        task: task_pb2.Task,
        fixed: bytes,
        event: task_pb2.TaskEvent,
        holder: str,
        lease_seconds: float,
        fingerprint: str,
        values: Mapping[str, bytes] | None,
        kept: Kept | None,
        group: QueueGroup,
    ) -> tuple[int, Any]:
        """Run the create script (a rerun's, with `kept`): (1, lease token) made, (0, fingerprint) found."""
        partition = self.layout.partition_of(task.task_id)
        keys = self.layout.task(task.task_id)
        args: list[Any] = [
            task.task_id,
            fixed,
            live_part(task),
            task.status,
            task.priority,
            task.owner,
            task.workflow_id,
            fingerprint,
            event.SerializeToString(),
            holder,
            int((now_seconds() + lease_seconds) * 1000),
            group.name,
            group.max_running,
            self.layout.task_prefix(partition),
            "" if (deadline := queue_deadline(task)) is None else int(deadline * 1000),
        ]
        script_keys = [
            keys.header,
            keys.events,
            self.layout.queue(partition),
            keys.values,
            self.layout.leases(partition),
            *self.layout.indexes_of(partition, task.status, task.owner, task.workflow_id),
        ]
        labels = [self.layout.label_index(partition, key, value) for key, value in sorted(task.labels.items())]
        if kept is None:
            for digest, data in (values or {}).items():
                args += [digest, data]
            script_keys += labels
            created, detail = await self.conn.write(self._create, script_keys, args)
        else:
            source = self.layout.task(kept.source_task_id)
            script_keys += [keys.steps, keys.order, keys.links, source.header, source.reruns, *labels]
            args += [kept.source_task_id, len(values or {})]
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
        return created, detail

    async def _placed_id(self, task: task_pb2.Task, partition: int, dedupe: str) -> str:
        """An id in `partition`: at random, or from the request_id (`dedupe`), one per partition
        (the same each try, so the dedupe is the task's own key, as for a submission). The same
        request_id for a task placed in another partition is refused, as on SQLite."""
        if not task.request_id:
            while True:
                candidate = uuid.uuid4().hex
                if self.layout.partition_of(candidate) == partition:
                    return candidate
        ids = self._request_ids(task.owner, dedupe)
        others = [ids[p] for p in range(self.layout.partitions) if p != partition]
        async with self.conn.pipeline(transaction=False) as pipe:
            for other in others:
                pipe.exists(self.layout.task(other).header)
            found = await self.conn.do(pipe.execute())
        for other, exists in zip(others, found):
            if exists:
                raise RequestIdReused(task.request_id, other)
        return ids[partition]

    async def task_of_request(self, owner: str, request_id: str, rerun: bool = False) -> RequestedTask | None:
        """Every id the request can have made (its own; one per partition, for a placed task),
        looked up in one round trip."""
        dedupe = rerun_dedupe_key(request_id) if rerun else request_id
        candidates = [request_task_id(owner, dedupe), *self._request_ids(owner, dedupe).values()]
        async with self.conn.pipeline(transaction=False) as pipe:
            for candidate in candidates:
                pipe.hget(self.layout.task(candidate).header, "fp")
            found = await self.conn.do(pipe.execute())
        for candidate, fingerprint in zip(candidates, found):
            if fingerprint is not None and (task := await self.tasks.get_task(candidate)) is not None:
                return RequestedTask(task, fingerprint.decode())
        return None

    def _request_ids(self, owner: str, dedupe: str) -> dict[int, str]:
        """For each partition, the first of the ids derived from (owner, dedupe, 0, 1, ...) that lands there."""
        ids: dict[int, str] = {}
        attempt = 0
        while len(ids) < self.layout.partitions:
            candidate = request_task_id(owner, f"{dedupe}\0{attempt}")
            ids.setdefault(self.layout.partition_of(candidate), candidate)
            attempt += 1
        return ids

    async def claim_task(self, owner: str, lease_seconds: float) -> tuple[task_pb2.Task, int] | None:
        claimed = await self.claim_tasks(owner, lease_seconds, 1)
        return claimed[0] if claimed else None

    async def claim_tasks(self, owner: str, lease_seconds: float, count: int) -> list[tuple[task_pb2.Task, int]]:
        """Claim up to `count` tasks of the highest priority queued, round robin across groups on
        every partition: the first turns of each partition are read, ordered by when their group
        was last granted a task anywhere (the hint in P{fair}:last), and shared out one task per
        group in that order; then every partition concerned is claimed from in one round trip,
        and the groups' last grants noted in the same trip."""
        heads, silent = await self._queue_heads()
        if not heads:
            return []
        best = min(score for entries in heads.values() for _, score in entries)
        turns = [(p, member) for p, entries in heads.items() for member, score in entries if score == best]
        groups = sorted({group_of(member) for _, member in turns})
        last: dict[str, float] = {}
        # a hint: while its master is away (silent in the heads read), groups go in name order, unnoted
        hint_away = self.conn.cluster and self.conn.r.get_node_from_key(self.layout.fair_turns).name in silent
        if len(groups) > 1 and not hint_away:
            with contextlib.suppress(Unavailable):
                granted = await self.conn.do(self.conn.r.hmget(self.layout.fair_turns, groups))
                last = {g: float(t) for g, t in zip(groups, granted) if t is not None}
        shares = share_out(turns, last, count)
        if not shares:
            return []
        by_partition: dict[int, list[Any]] = {}
        for (partition, member), n in shares.items():
            by_partition.setdefault(partition, []).extend([member, n])
        expiry = int((now_seconds() + lease_seconds) * 1000)
        calls: list[tuple[Any, list[str], list[Any]]] = [
            (
                self._claim,
                [self.layout.queue(p), self.layout.leases(p), self.layout.due(p)],
                [expiry, owner, self.layout.task_prefix(p), PENDING, RUNNING, WAITING, *pairs],
            )
            for p, pairs in by_partition.items()
        ]
        noted = {group_of(member): int(now_seconds() * 1000) for _, member in shares}
        if not hint_away:
            calls.append(
                (
                    self._note_turns,
                    [self.layout.fair_turns],
                    [FORGET_TURNS_MS, *(x for kv in noted.items() for x in kv)],
                )
            )
        # a master gone silent since the heads read is waited for a moment, not its socket timeout:
        # what it may claim meanwhile waits out its lease (those claimed elsewhere run now)
        replies = (await self.conn.writes_answered(calls, grace=SILENT_MASTER_GRACE))[: len(by_partition)]
        if all(reply is None for reply in replies):
            raise Unavailable("no master answered a claim")
        return [
            (assemble(reply[i], reply[i + 1]), int(reply[i + 2]))
            for reply in replies
            if reply is not None
            for i in range(0, len(reply), 3)
        ]

    async def claim_waiting(self, task_id: str, owner: str, lease_seconds: float) -> tuple[task_pb2.Task, int] | None:
        partition = self.layout.partition_of(task_id)
        reply = await self.conn.write(
            self._claim_waiting,
            [
                self.layout.task(task_id).header,
                self.layout.leases(partition),
                self.layout.queue(partition),
                self.layout.due(partition),
            ],
            [task_id, owner, int((now_seconds() + lease_seconds) * 1000), WAITING],
        )
        return (assemble(reply[0], reply[1]), int(reply[2])) if reply else None

    async def _queue_heads(self) -> tuple[dict[int, list[tuple[bytes, float]]], set[str]]:
        """Each non-empty partition's first HEAD_TURNS turns: (member, -priority); on a cluster,
        of the partitions whose masters answer (one away holds up only its own tasks), with the
        names of the masters that did not."""
        queues = [self.layout.queue(p) for p in range(self.layout.partitions)]
        silent: set[str] = set()
        if self.conn.cluster:
            replies = await self.conn.each_answered(
                [self.conn.r.zrange(q, 0, HEAD_TURNS - 1, withscores=True) for q in queues], grace=SILENT_MASTER_GRACE
            )
            silent = {self.conn.r.get_node_from_key(q).name for q, reply in zip(queues, replies) if reply is None}
        else:
            async with self.conn.pipeline(transaction=False) as pipe:
                for queue in queues:
                    pipe.zrange(queue, 0, HEAD_TURNS - 1, withscores=True)
                replies = await self.conn.do(pipe.execute())
        return {p: [(member, score) for member, score in reply] for p, reply in enumerate(replies) if reply}, silent

    async def renew_leases(
        self, leases: Mapping[str, int], lease_seconds: float, fresh: bool = False
    ) -> AsyncIterator[LeaseReply]:
        """Renew every lease, one script per partition, all in one round trip (on a cluster, each
        master's partitions answer as they come); `fresh`, on a connection of its own."""
        if not leases:
            return
        expiry = int((now_seconds() + lease_seconds) * 1000)
        by_partition: dict[int, list[Any]] = {}
        for task_id, token in leases.items():
            by_partition.setdefault(self.layout.partition_of(task_id), []).extend([task_id, token])
        parts = list(by_partition.items())
        calls = [
            (self._renew, [self.layout.leases(p)], [expiry, self.layout.task_prefix(p), *pairs]) for p, pairs in parts
        ]
        async with self.conn.fresh() if fresh else contextlib.nullcontext(self.conn) as conn:
            async for index, reply in conn.scripts_as_answered(calls):
                lost = {t.decode() for t in reply}
                yield LeaseReply([t for t in parts[index][1][::2] if t not in lost], sorted(lost))

    async def release_expired_leases(self) -> int:
        now_ms = int(now_seconds() * 1000)
        replies = await self.conn.scripts_answered(
            [
                (
                    self._release,
                    [self.layout.leases(p), self.layout.queue(p)],
                    # WAITING too: a task a signal leased to its replica to resume there (waits_lua)
                    [now_ms, self.layout.task_prefix(p), PENDING, RUNNING, WAITING],
                )
                for p in range(self.layout.partitions)
            ],
            grace=SILENT_MASTER_GRACE,  # a master away: its expired leases wait for it
        )
        return sum(int(n) for n in replies if n is not None)

    async def queue_depth_by_priority(self) -> dict[int, int]:
        """Queued tasks per priority: each partition's counts, plus tasks queued before groups."""
        depth: dict[int, int] = {}
        for counts in await self.conn.scripts(
            [(self._depth, [self.layout.queue(p)], []) for p in range(self.layout.partitions)]
        ):
            for i in range(0, len(counts), 2):
                priority = int(counts[i])
                depth[priority] = depth.get(priority, 0) + int(counts[i + 1])
        return depth

    async def queue_length(self) -> int:
        return sum((await self.queue_depth_by_priority()).values())

    async def group_members(self, group: QueueGroup) -> list[GroupMember]:
        partition = self.layout.partition_of(group.name)
        reply = await self.conn.do(
            self._members(
                keys=[self.layout.queue(partition), self.layout.leases(partition)],
                args=[group.name, self.layout.task_prefix(partition), *TERMINAL_STATUSES],
            )
        )
        return [
            GroupMember(reply[i].decode(), int(reply[i + 1]), bool(int(reply[i + 2]))) for i in range(0, len(reply), 3)
        ]

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
                        self.layout.ends(partition),
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
