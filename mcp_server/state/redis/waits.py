"""Signals, waiting steps and timers on Redis (see WaitStore in engine/ports): per task a hash of
signals and one of waiting steps, per partition a due-time index and the tasks whose signals the
replica holding them has not taken in (layout.py), and one pub/sub channel on which the script
that appends such a signal nudges every replica, so the one holding the task takes it in at once."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from mcp_sdk.proto import task_pb2
from mcp_server.engine.ports import SignalDelivery, SignalOutcome, SignalRecord, WaitRecord
from mcp_server.state.common import TERMINAL, assemble, now_seconds
from mcp_server.state.redis import waits_lua as lua
from mcp_server.state.redis.channels import follow_channel
from mcp_server.state.redis.connection import SILENT_MASTER_GRACE, RedisConnection
from mcp_server.state.redis.opening import text
from mcp_server.state.redis.streams import StreamHub

WAITING = task_pb2.TASK_STATUS_WAITING
# a queued task past its deadline that a sweep handed out comes due again this long after, unless
# its cancel went through (see RELEASE_DUE): a sweep's cancels take milliseconds
EXPIRED_RETAKE_MS = 2000


class RedisWaits:
    """WaitStore on Redis."""

    def __init__(self, conn: RedisConnection, hub: StreamHub) -> None:
        self.conn = conn
        self.layout = conn.layout
        self.hub = hub
        self._send = conn.register(lua.SEND_SIGNAL)
        self._release_due = conn.register(lua.RELEASE_DUE)
        self._resume_soon = conn.register(lua.RESUME_SOON)
        self._scan_sets = conn.register(lua.SCAN_SETS)

    async def read_signals(self, task_id: str) -> list[SignalRecord]:
        fields = await self._hash(self.layout.task(task_id).signals)
        records = []
        for index in range(1, int(fields.get("n", b"0")) + 1):
            data = fields.get(str(index))
            if data is not None:
                records.append(_record(index, data, fields.get(f"s:{index}")))
        return records

    async def read_waits(self, task_id: str) -> dict[str, WaitRecord]:
        fields = await self._hash(self.layout.task(task_id).waits)
        return {path: WaitRecord.decode(text(record)) for path, record in fields.items()}

    async def _hash(self, key: str) -> dict[str, Any]:
        """A whole hash, through the lane when there is one (read when a waiting task resumes)."""
        if self.conn.lane is None:
            raw = await self.conn.do(self.conn.r.hgetall(key))
            return {text(k): v for k, v in raw.items()}
        flat = await self.conn.do(self.conn.lane.call("HGETALL", key))
        return {text(flat[i]): flat[i + 1] for i in range(0, len(flat), 2)}

    async def send_signal(
        self, task_id: str, request: task_pb2.SignalTaskRequest, delivery: SignalDelivery
    ) -> SignalOutcome:
        stored = task_pb2.SignalTaskRequest(
            signal=request.signal, payload=request.payload, request_id=request.request_id, step_path=request.step_path
        )
        partition = self.layout.partition_of(task_id)
        keys = self.layout.task(task_id)
        event = delivery.event
        reply = await self.conn.do(
            self.conn.script(
                self._send,
                [
                    keys.header,
                    keys.signals,
                    keys.events,
                    self.layout.queue(partition),
                    self.layout.signals_pending(partition),
                    keys.waits,
                    self.layout.leases(partition),
                    self.layout.due(partition),
                ],
                [
                    task_id,
                    request.request_id,
                    stored.SerializeToString(),
                    delivery.expected_sequence,
                    event.sequence,
                    event.SerializeToString(),
                    delivery.live,
                    delivery.assigned,
                    delivery.wait.encode() if delivery.wait is not None else "",
                    int(now_seconds() * 1000),
                    WAITING,
                    delivery.holder,
                    int((now_seconds() + delivery.lease_seconds) * 1000),
                    self.layout.signal_channel,
                    delivery.max_signals,
                    delivery.max_signal_bytes,
                    self.layout.event_waits(partition),
                    *TERMINAL,
                ],
            )
        )
        status = text(reply[0])
        if status == "duplicate":
            return SignalOutcome(status, _record(int(reply[1]), reply[2], reply[3] or None))
        if status == "appended":
            return SignalOutcome(status, SignalRecord(int(reply[1]), stored))
        if status in ("delivered", "leased"):
            self.hub.written(keys.events, [event], writer=status == "leased")  # leased: resumed here
            record = SignalRecord(int(reply[1]), stored, event.sequence, delivery.assigned)
            leased = (assemble(reply[2], reply[3]), int(reply[4])) if status == "leased" else None
            return SignalOutcome("delivered", record, leased)
        return SignalOutcome(status)

    async def event_waiters(self, signal: str, keys: Sequence[str]) -> list[tuple[str, str, str]]:
        """Every partition's set for (signal, key) of each key, a page of each at a time (SSCAN),
        all together: a publish with no wait for its event pays one round trip, and a set of
        100,000 waits is not one reply that holds Redis."""
        partitions = range(self.layout.partitions)
        cursors = {(key, f"{self.layout.event_waits(p)}{signal}|{key}"): 0 for key in keys for p in partitions}
        found = []
        while cursors:
            replies = await self._scan_pages({index: cursor for (_, index), cursor in cursors.items()})
            for (key, index), (cursor, members) in zip(list(cursors), replies, strict=True):
                found += [(key, task_id, path) for task_id, _, path in (text(m).partition("|") for m in members)]
                if int(cursor):
                    cursors[(key, index)] = int(cursor)
                else:
                    del cursors[(key, index)]
        return list(dict.fromkeys(found))  # a set rehashed between pages may list a member twice

    async def _scan_pages(self, cursors: dict[str, int]) -> list[Any]:
        """One SSCAN page of each set, from its cursor: in one script on a single node (the lane
        when there is one), in a pipeline on a cluster (the sets are in the partitions' slots)."""
        if not self.conn.cluster:
            flat = await self.conn.do(self.conn.script(self._scan_sets, list(cursors), list(cursors.values())))
            if not flat:  # none of them exists
                return [(0, [])] * len(cursors)
            return [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]
        async with self.conn.pipeline(transaction=False) as pipe:
            for index, cursor in cursors.items():
                pipe.sscan(index, cursor, count=500)
            return list(await self.conn.do(pipe.execute()))

    async def forget_event_waiter(self, signal: str, key: str, task_id: str, path: str) -> None:
        partition = self.layout.partition_of(task_id)
        index = f"{self.layout.event_waits(partition)}{signal}|{key}"
        await self.conn.do(self.conn.r.srem(index, f"{task_id}|{path}"))

    async def pending_signals(self, task_ids: Sequence[str]) -> set[str]:
        if not task_ids:
            return set()
        if self.conn.cluster:  # each master on its own: a silent one holds up only its own tasks' signals
            reads = [self.conn.r.zrange(self.layout.signals_pending(p), 0, 999) for p in range(self.layout.partitions)]
            replies = await self.conn.each_answered(reads, grace=SILENT_MASTER_GRACE)
        else:
            async with self.conn.pipeline(transaction=False) as pipe:
                for partition in range(self.layout.partitions):
                    pipe.zrange(self.layout.signals_pending(partition), 0, 999)
                replies = await self.conn.do(pipe.execute())
        return {text(raw) for reply in replies if reply for raw in reply} & set(task_ids)

    def signal_nudges(self) -> AsyncIterator[str]:
        """Task ids from the signal channel (SEND_SIGNAL publishes one when it appends a signal to a
        held task); what is lost to a dropped connection the replicas' poll finds."""
        return follow_channel(self.conn, self.layout.signal_channel, "signals through other replicas wait for the poll")

    async def release_due(self) -> tuple[int, list[str]]:
        now_ms = int(now_seconds() * 1000)
        replies = await self.conn.scripts_answered(
            [
                (
                    self._release_due,
                    [self.layout.due(p), self.layout.queue(p)],
                    [now_ms, self.layout.task_prefix(p), WAITING, task_pb2.TASK_STATUS_PENDING, EXPIRED_RETAKE_MS],
                )
                for p in range(self.layout.partitions)
            ],
            grace=SILENT_MASTER_GRACE,
        )
        answered = [reply for reply in replies if reply is not None]  # a master away: its timers wait for it
        return sum(int(reply[0]) for reply in answered), [raw.decode() for reply in answered for raw in reply[1:]]

    async def resume_soon(self, task_ids: Sequence[str]) -> None:
        by_partition: dict[int, list[str]] = {}
        for task_id in task_ids:
            by_partition.setdefault(self.layout.partition_of(task_id), []).append(task_id)
        now_ms = int(now_seconds() * 1000)
        calls = [
            (self._resume_soon, [self.layout.due(p)], [now_ms, self.layout.task_prefix(p), WAITING, *ids])
            for p, ids in by_partition.items()
        ]
        if calls:
            await self.conn.scripts(calls)

    async def waiting_count(self) -> int:
        async with self.conn.pipeline(transaction=False) as pipe:
            for partition in range(self.layout.partitions):
                pipe.zcard(self.layout.index(partition, WAITING))
            return sum(int(n) for n in await self.conn.do(pipe.execute()))


def _record(index: int, data: Any, taken: Any) -> SignalRecord:
    """A signal as stored: its request, and `<sequence>|<step>` once it was taken in."""
    sequence, assigned = text(taken).split("|", 1) if taken else ("0", "")
    return SignalRecord(index, task_pb2.SignalTaskRequest.FromString(data), int(sequence), assigned)
