"""Task records, steps, values and events in the embedded store (see TaskStore in engine/ports).

Every write is this process's, so watchers of a task are fed from memory after each write commits
(state/followers.py): one read when a watcher starts, none per event after that."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from mcp_sdk.proto import task_pb2
from mcp_server.engine.ports import Checkpoint, Deletion, StepRecord, TaskFilter, TaskPage
from mcp_server.errors import CancelRequested, LeaseLost, task_not_found
from mcp_server.state.common import (
    EVENTS_PAGE,
    EVENTS_PAGE_BYTES,
    TERMINAL,
    assemble,
    decode_position,
    encode_token,
    now_seconds,
    page_is_full,
)
from mcp_server.state.sqlite.database import SqliteDatabase
from mcp_server.state.sqlite.waits import put_wait


class SqliteTasks:
    """TaskStore on SQLite."""

    def __init__(self, db: SqliteDatabase) -> None:
        self.db = db

    async def get_task(self, task_id: str) -> task_pb2.Task | None:
        rows = await self.db.rows("SELECT fixed, live FROM tasks WHERE task_id=?", (task_id,))
        return assemble(rows[0][0], rows[0][1]) if rows else None

    async def list_tasks(self, page_size: int, page_token: str, where: TaskFilter) -> TaskPage:
        """Newest first. The token is the row number of the last task returned, so pages stay
        stable while tasks arrive (they sort before it) or are purged (they drop out)."""
        position = decode_position(page_token)
        conditions: list[str] = []
        args: list[object] = []
        if where.statuses:
            conditions.append(f"status IN ({','.join('?' * len(where.statuses))})")
            args += list(where.statuses)
        if where.workflow_id:
            conditions.append("workflow_id=?")
            args.append(where.workflow_id)
        if where.owner:
            conditions.append("owner=?")
            args.append(where.owner)
        for key, value in where.labels:
            conditions.append("seq IN (SELECT seq FROM task_labels WHERE key=? AND value=?)")
            args += [key, value]
        if where.created_after_us:
            conditions.append("created_us>=?")
            args.append(where.created_after_us)
        if where.created_before_us:
            conditions.append("created_us<?")
            args.append(where.created_before_us)
        filtered = " AND ".join(conditions) or "1"

        def select(db: sqlite3.Connection) -> tuple[list[Any], int]:
            rows = db.execute(
                f"SELECT seq, fixed, live FROM tasks WHERE {filtered} AND seq < ? ORDER BY seq DESC LIMIT ?",
                [*args, 2**62 if position is None else position, page_size + 1],
            ).fetchall()
            total = db.execute(f"SELECT COUNT(*) FROM tasks WHERE {filtered}", args).fetchone()[0]
            return rows, int(total)

        rows, total = await self.db.run(select)
        page = rows[:page_size]
        return TaskPage(
            [assemble(r[1], r[2]) for r in page], [encode_token(str(r[0])) for r in page], len(rows) > page_size, total
        )

    async def read_steps(self, task_id: str, start: int, limit: int) -> list[StepRecord]:
        rows = await self.db.rows(
            "SELECT idx, path, data FROM steps WHERE task_id=? AND idx>=? ORDER BY idx LIMIT ?",
            (task_id, start, min(limit, 2**62)),
        )
        return [StepRecord(int(r[0]), str(r[1]), bytes(r[2])) for r in rows]

    async def labelled(self, labels: Sequence[tuple[str, str]]) -> bool:
        def look(db: sqlite3.Connection) -> bool:
            found = (
                db.execute("SELECT 1 FROM task_labels WHERE key=? AND value=? LIMIT 1", pair).fetchone()
                for pair in labels
            )
            return any(row is not None for row in found)

        return await self.db.run(look)

    async def reruns_of(self, task_id: str, limit: int) -> list[str]:
        rows = await self.db.rows("SELECT task_id FROM tasks WHERE rerun_of=? ORDER BY seq LIMIT ?", (task_id, limit))
        return [str(r[0]) for r in rows]

    async def read_step(self, task_id: str, path: str) -> StepRecord | None:
        rows = await self.db.rows("SELECT idx, path, data FROM steps WHERE task_id=? AND path=?", (task_id, path))
        return StepRecord(int(rows[0][0]), str(rows[0][1]), bytes(rows[0][2])) if rows else None

    async def read_values(self, task_id: str, digests: Sequence[str]) -> dict[str, bytes]:
        if not digests:
            return {}
        marks = ",".join("?" * len(digests))
        rows = await self.db.rows(
            f"SELECT digest, data FROM task_values WHERE task_id=? AND digest IN ({marks})"
            " UNION ALL SELECT l.digest, v.data FROM value_links l JOIN task_values v"
            f" ON v.task_id=l.origin AND v.digest=l.digest WHERE l.task_id=? AND l.digest IN ({marks})",
            [task_id, *digests, task_id, *digests],
        )
        return {str(r[0]): bytes(r[1]) for r in rows}

    async def save_checkpoint(self, checkpoint: Checkpoint) -> None:
        terminal = checkpoint.status in TERMINAL
        waiting = checkpoint.status == task_pb2.TASK_STATUS_WAITING
        last = checkpoint.events[-1].sequence if checkpoint.events else 0
        due = checkpoint.due_ms / 1000 if waiting and checkpoint.due_ms else None

        def write(db: sqlite3.Connection) -> None:
            with db:
                updated = db.execute(
                    "UPDATE tasks SET live=?, status=?, last_sequence=MAX(last_sequence, ?), "
                    "lease_expires=CASE WHEN ? THEN NULL ELSE lease_expires END,"
                    " finished_at=CASE WHEN ? THEN ? ELSE NULL END, due_at=? "
                    "WHERE task_id=? AND lease_token=?",
                    (
                        checkpoint.live,
                        checkpoint.status,
                        last,
                        terminal or waiting,
                        terminal,
                        now_seconds(),
                        due,
                        checkpoint.task_id,
                        checkpoint.lease_token,
                    ),
                )
                if updated.rowcount != 1:
                    raise LeaseLost(f"task {checkpoint.task_id}: lease {checkpoint.lease_token} is no longer held")
                if checkpoint.status == task_pb2.TASK_STATUS_COMPLETED and (cancel := _cancel_reason(db, checkpoint)):
                    raise CancelRequested(cancel)  # rolled back: the run ends CANCELLED instead
                db.executemany(
                    "INSERT OR REPLACE INTO steps VALUES (?,?,?,?)",
                    [(checkpoint.task_id, s.index, s.path, s.data) for s in checkpoint.steps],
                )
                db.executemany(
                    "INSERT OR IGNORE INTO task_values VALUES (?,?,?)",
                    [(checkpoint.task_id, d, data) for d, data in checkpoint.values.items()],
                )
                db.executemany(
                    "INSERT OR IGNORE INTO events VALUES (?,?,?)",
                    [(e.task_id, e.sequence, e.SerializeToString()) for e in checkpoint.events],
                )
                if checkpoint.waits or checkpoint.signals_taken or waiting:
                    _write_waits(db, checkpoint, waiting)

        await self.db.run(write)
        self.db.written(checkpoint.task_id, checkpoint.events)

    async def read_events(
        self, task_id: str, after_sequence: int, limit: int = EVENTS_PAGE
    ) -> list[task_pb2.TaskEvent]:
        def read(db: sqlite3.Connection) -> list[task_pb2.TaskEvent]:
            rows = db.execute(  # stepped row by row: no more than a page's bytes is read
                "SELECT data FROM events WHERE task_id=? AND sequence>? ORDER BY sequence LIMIT ?",
                (task_id, after_sequence, limit),
            )
            events, total = [], 0
            for (data,) in rows:
                events.append(task_pb2.TaskEvent.FromString(data))
                total += len(data)
                if total >= EVENTS_PAGE_BYTES:
                    break
            rows.close()
            return events

        return await self.db.run(read)

    async def wait_events(self, task_id: str, after_sequence: int, timeout: float) -> list[task_pb2.TaskEvent]:
        """Events after `after_sequence`, waiting up to `timeout` for one. Every write is this
        process's, so a followed log is fed from memory after the write commits: one read
        when a watcher starts, none per event after that."""
        if not self.db.followers.covers(task_id, after_sequence):
            self.db.followers.prune()
            self.db.followers.follow(task_id, after_sequence)  # first follow, then read: nothing falls between
            events = await self.read_events(task_id, after_sequence, EVENTS_PAGE)
            if page_is_full(events):  # more may be stored after this page: read on from there next time
                self.db.followers.unfollow(task_id)
                return events
            self.db.followers.add(task_id, events)
            if events:
                return events
        followed = await self.db.followers.wait(task_id, after_sequence, timeout)
        return await self.read_events(task_id, after_sequence) if followed is None else followed

    async def purge_finished(self) -> int:
        cutoff = now_seconds() - self.db.retention_seconds

        def purge(db: sqlite3.Connection) -> int:
            with db:
                return _remove_tasks(db, "SELECT task_id FROM tasks WHERE finished_at < ?", (cutoff,))

        return await self.db.run(purge)

    async def delete_finished(self, task_id: str) -> Deletion:
        def delete(db: sqlite3.Connection) -> Deletion:
            with db:
                row = db.execute("SELECT status FROM tasks WHERE task_id=?", (task_id,)).fetchone()
                if row is None:
                    return Deletion.MISSING
                if row[0] not in TERMINAL:
                    return Deletion.NOT_FINISHED
                _remove_tasks(db, "SELECT ?", (task_id,))
                return Deletion.DELETED

        done = await self.db.run(delete)
        if done is Deletion.DELETED:
            self.db.followers.forget(task_id, task_not_found(task_id))
        return done

    def forget_log_before(self, task_id: str, created_ns: int) -> None:
        self.db.followers.forget_before(task_id, created_ns)


def _remove_tasks(db: sqlite3.Connection, gone: str, params: tuple[object, ...]) -> int:
    """Delete the tasks that the query `gone` (with `params`) selects, with everything they hold;
    how many there were. A value that a rerun which stays shares with a task that goes is
    copied to the rerun first."""
    db.execute(
        "INSERT OR IGNORE INTO task_values SELECT l.task_id, l.digest, v.data FROM value_links l"
        " JOIN task_values v ON v.task_id=l.origin AND v.digest=l.digest"
        f" WHERE l.origin IN ({gone}) AND l.task_id NOT IN ({gone})",
        params + params,
    )
    db.execute(f"DELETE FROM value_links WHERE origin IN ({gone})", params)
    for table in ("events", "steps", "task_values", "value_links", "signals", "waits", "event_waits", "task_labels"):
        db.execute(f"DELETE FROM {table} WHERE task_id IN ({gone})", params)
    return int(db.execute(f"DELETE FROM tasks WHERE task_id IN ({gone})", params).rowcount)


def _write_waits(db: sqlite3.Connection, checkpoint: Checkpoint, waiting: bool) -> None:
    """The waits and signals a checkpoint changes; a task written WAITING that has signals not
    taken in, or a cancel request, is queued at once (they came while it was being parked)."""
    task_id = checkpoint.task_id
    for path, record in checkpoint.waits.items():
        put_wait(db, task_id, path, record)
    db.executemany(
        "UPDATE signals SET sequence=?, assigned=? WHERE task_id=? AND idx=?",
        [(sequence, assigned, task_id, index) for index, (sequence, assigned) in checkpoint.signals_taken.items()],
    )
    if waiting:
        db.execute(
            "UPDATE tasks SET queued=1 WHERE task_id=? AND (cancel_reason IS NOT NULL OR EXISTS "
            "(SELECT 1 FROM signals WHERE task_id=? AND sequence=0))",
            (task_id, task_id),
        )


def _cancel_reason(db: sqlite3.Connection, checkpoint: Checkpoint) -> str | None:
    """The reason of a cancel request stored for the checkpoint's task, if any."""
    row = db.execute("SELECT cancel_reason FROM tasks WHERE task_id=?", (checkpoint.task_id,)).fetchone()
    return None if row is None or row[0] is None else str(row[0])
