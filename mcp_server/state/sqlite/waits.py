"""Signals, waiting steps and timers in the embedded store (see WaitStore in engine/ports): the
`signals` and `waits` tables, and the tasks' `due_at` column for those that wait."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Sequence
from typing import Any

from mcp_sdk.proto import task_pb2
from mcp_server.engine.ports import SignalDelivery, SignalOutcome, SignalRecord, WaitRecord
from mcp_server.state.common import TERMINAL, assemble, now_seconds
from mcp_server.state.sqlite.database import SqliteDatabase
from mcp_server.state.sqlite.queue import running_in_group

WAITING = task_pb2.TASK_STATUS_WAITING


def put_wait(db: sqlite3.Connection, task_id: str, path: str, record: WaitRecord | None) -> None:
    """Write the wait at `path` (None: it stopped waiting), and its entry in the index of waits for
    events (`event_waiters`): there while it waits for an event with nothing assigned to it."""
    db.execute("DELETE FROM event_waits WHERE task_id=? AND path=?", (task_id, path))
    if record is None:
        db.execute("DELETE FROM waits WHERE task_id=? AND path=?", (task_id, path))
        return
    db.execute("INSERT OR REPLACE INTO waits VALUES (?,?,?)", (task_id, path, record.encode()))
    if record.key is not None and not record.assigned:
        db.execute("INSERT INTO event_waits VALUES (?,?,?,?)", (record.signal, record.key, task_id, path))


class SqliteWaits:
    """WaitStore on SQLite."""

    def __init__(self, db: SqliteDatabase) -> None:
        self.db = db

    async def read_signals(self, task_id: str) -> list[SignalRecord]:
        rows = await self.db.rows(
            "SELECT idx, data, sequence, assigned FROM signals WHERE task_id=? ORDER BY idx", (task_id,)
        )
        return [_signal(row) for row in rows]

    async def read_waits(self, task_id: str) -> dict[str, WaitRecord]:
        rows = await self.db.rows("SELECT path, record FROM waits WHERE task_id=?", (task_id,))
        return {str(r[0]): WaitRecord.decode(str(r[1])) for r in rows}

    async def send_signal(
        self, task_id: str, request: task_pb2.SignalTaskRequest, delivery: SignalDelivery
    ) -> SignalOutcome:
        stored = task_pb2.SignalTaskRequest(
            signal=request.signal, payload=request.payload, request_id=request.request_id, step_path=request.step_path
        )
        events: list[task_pb2.TaskEvent] = []
        data = stored.SerializeToString()

        def send(db: sqlite3.Connection) -> SignalOutcome:
            if request.request_id:
                row = db.execute(
                    "SELECT idx, data, sequence, assigned FROM signals WHERE task_id=? AND request_id=?",
                    (task_id, request.request_id),
                ).fetchone()
                if row is not None:
                    return SignalOutcome("duplicate", _signal(row))
            head = db.execute(
                "SELECT status, last_sequence, lease_expires, fixed, lease_token, fair_group, fair_cap"
                " FROM tasks WHERE task_id=?",
                (task_id,),
            ).fetchone()
            if head is None or head[0] in TERMINAL:
                return SignalOutcome("finished")
            last = db.execute(
                "SELECT idx, held_bytes FROM signals WHERE task_id=? ORDER BY idx DESC LIMIT 1", (task_id,)
            ).fetchone()
            index, held_bytes = (last[0] + 1, last[1] + len(data)) if last else (1, len(data))
            if delivery.max_signals and index > delivery.max_signals:
                return SignalOutcome("full")
            if delivery.max_signal_bytes and held_bytes > delivery.max_signal_bytes:
                return SignalOutcome("full of bytes")
            if head[2] is not None:  # leased: the replica that runs it takes it in
                with db:
                    db.execute(
                        "INSERT INTO signals VALUES (?,?,?,?,0,'',?)",
                        (task_id, index, request.request_id, data, held_bytes),
                    )
                return SignalOutcome("appended", SignalRecord(index, stored))
            if head[1] != delivery.expected_sequence:
                return SignalOutcome("stale")
            event = delivery.event
            with db:
                db.execute(
                    "INSERT INTO signals VALUES (?,?,?,?,?,?,?)",
                    (task_id, index, request.request_id, data, event.sequence, delivery.assigned, held_bytes),
                )
                db.execute("INSERT INTO events VALUES (?,?,?)", (task_id, event.sequence, event.SerializeToString()))
                db.execute(
                    "UPDATE tasks SET live=?, last_sequence=?, queued=CASE WHEN status=? THEN 1 ELSE queued END"
                    " WHERE task_id=?",
                    (delivery.live, event.sequence, WAITING, task_id),
                )
                if delivery.wait is not None:
                    put_wait(db, task_id, delivery.assigned, delivery.wait)
                leased = None
                full = bool(head[6]) and running_in_group(db, head[5]) >= head[6]
                if head[0] == WAITING and delivery.holder and not full:  # resumed here: leased, never queued
                    token = int(head[4]) + 1
                    db.execute(
                        "UPDATE tasks SET queued=0, lease_owner=?, lease_token=?, lease_expires=?, due_at=NULL"
                        " WHERE task_id=?",
                        (delivery.holder, token, now_seconds() + delivery.lease_seconds, task_id),
                    )
                    leased = (assemble(head[3], delivery.live), token)
            events.append(event)
            record = SignalRecord(index, stored, event.sequence, delivery.assigned)
            return SignalOutcome("delivered", record, leased)

        outcome = await self.db.run(send)
        self.db.written(task_id, events)
        return outcome

    async def event_waiters(self, signal: str, keys: Sequence[str]) -> list[tuple[str, str, str]]:
        rows = await self.db.rows(
            f"SELECT key, task_id, path FROM event_waits WHERE signal=? AND key IN ({','.join('?' * len(keys))})",
            (signal, *keys),
        )
        return [(str(r[0]), str(r[1]), str(r[2])) for r in rows]

    async def forget_event_waiter(self, signal: str, key: str, task_id: str, path: str) -> None:
        def forget(db: sqlite3.Connection) -> None:
            with db:
                db.execute(
                    "DELETE FROM event_waits WHERE signal=? AND key=? AND task_id=? AND path=?",
                    (signal, key, task_id, path),
                )

        await self.db.run(forget)

    async def pending_signals(self, task_ids: Sequence[str]) -> set[str]:
        if not task_ids:
            return set()
        rows = await self.db.rows(
            f"SELECT DISTINCT task_id FROM signals WHERE sequence=0 AND task_id IN ({','.join('?' * len(task_ids))})",
            list(task_ids),
        )
        return {str(r[0]) for r in rows}

    async def signal_nudges(self) -> AsyncIterator[str]:
        """None on SQLite: a process's own signals reach its runs in-process, another's by the poll."""
        return
        yield  # an async generator that ends at once

    async def release_due(self) -> tuple[int, list[str]]:
        def release(db: sqlite3.Connection) -> tuple[int, list[str]]:
            due = now_seconds()
            with db:
                queued = db.execute(
                    "UPDATE tasks SET queued=1, due_at=NULL WHERE due_at IS NOT NULL AND due_at <= ? AND status=?",
                    (due, WAITING),
                ).rowcount
            expired = db.execute(  # queued tasks past their queue deadline (cancelling them clears it)
                "SELECT task_id FROM tasks WHERE due_at IS NOT NULL AND due_at <= ? AND status=? AND queued=1"
                " ORDER BY due_at LIMIT 1000",
                (due, task_pb2.TASK_STATUS_PENDING),
            ).fetchall()
            return int(queued), [str(row[0]) for row in expired]

        return await self.db.run(release)

    async def waiting_count(self) -> int:
        rows = await self.db.rows("SELECT COUNT(*) FROM tasks WHERE status=?", (WAITING,))
        return int(rows[0][0])

    async def resume_soon(self, task_ids: Sequence[str]) -> None:
        due = now_seconds()
        for start in range(0, len(task_ids), 500):
            batch = list(task_ids[start : start + 500])
            await self.db.write(
                f"UPDATE tasks SET due_at=? WHERE task_id IN ({','.join('?' * len(batch))})"
                " AND status=? AND due_at > ?",
                (due, *batch, WAITING, due),
            )


def _signal(row: Any) -> SignalRecord:
    """A row (idx, data, sequence, assigned) of the signals table."""
    return SignalRecord(int(row[0]), task_pb2.SignalTaskRequest.FromString(row[1]), int(row[2]), str(row[3]))
