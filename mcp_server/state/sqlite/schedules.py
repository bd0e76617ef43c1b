"""Schedules in the embedded store (see ScheduleStore in engine/ports): a row each; one process
owns the file, so each change is one transaction on the store's thread."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from mcp_server.engine.ports.schedules import NEVER, RECENT_RUNS, ScheduleProgress, ScheduleRecord
from mcp_server.state.common import stored_run
from mcp_server.state.sqlite.database import SqliteDatabase

COLUMNS = (
    "schedule_id, owner, data, version, created_ms, runs, skipped, missed, last_fire_ms, buffered_ms, recent,"
    " refused, refusals, latest_run"
)


class SqliteSchedules:
    """ScheduleStore on SQLite."""

    def __init__(self, db: SqliteDatabase) -> None:
        self.db = db

    async def create_schedule(self, schedule_id: str, owner: str, data: bytes, created_ms: int, due_ms: int) -> bool:
        def create(db: sqlite3.Connection) -> bool:
            with db:
                cursor = db.execute(
                    "INSERT OR IGNORE INTO schedules (schedule_id, owner, data, version, created_ms, due_ms)"
                    " VALUES (?,?,?,1,?,?)",
                    (schedule_id, owner, data, created_ms, _due(due_ms)),
                )
                return cursor.rowcount == 1

        return await self.db.run(create)

    async def get_schedule(self, schedule_id: str) -> ScheduleRecord | None:
        rows = await self.db.rows(f"SELECT {COLUMNS} FROM schedules WHERE schedule_id=?", (schedule_id,))
        return _record(rows[0]) if rows else None

    async def list_schedules(self, owner: str | None, after: str, limit: int) -> list[ScheduleRecord]:
        if owner is None:
            rows = await self.db.rows(
                f"SELECT {COLUMNS} FROM schedules WHERE schedule_id>? ORDER BY schedule_id LIMIT ?", (after, limit)
            )
        else:
            rows = await self.db.rows(
                f"SELECT {COLUMNS} FROM schedules WHERE owner=? AND schedule_id>? ORDER BY schedule_id LIMIT ?",
                (owner, after, limit),
            )
        return [_record(row) for row in rows]

    async def update_schedule(self, schedule_id: str, data: bytes, due_ms: int, last_fire_ms: int | None) -> bool:
        def update(db: sqlite3.Connection) -> bool:
            with db:
                cursor = db.execute(
                    "UPDATE schedules SET data=?, version=version+1, due_ms=?,"
                    " last_fire_ms=COALESCE(?, last_fire_ms) WHERE schedule_id=?",
                    (data, _due(due_ms), last_fire_ms, schedule_id),
                )
                return cursor.rowcount == 1

        return await self.db.run(update)

    async def delete_schedule(self, schedule_id: str) -> bool:
        return await self.db.write("DELETE FROM schedules WHERE schedule_id=?", (schedule_id,)) == 1

    async def claim_due(self, now_ms: int, lease_ms: int, limit: int) -> list[ScheduleRecord]:
        def claim(db: sqlite3.Connection) -> list[ScheduleRecord]:
            with db:
                rows = db.execute(
                    f"SELECT {COLUMNS} FROM schedules WHERE due_ms IS NOT NULL AND due_ms<=? ORDER BY due_ms LIMIT ?",
                    (now_ms, limit),
                ).fetchall()
                db.executemany(
                    "UPDATE schedules SET due_ms=? WHERE schedule_id=?", [(now_ms + lease_ms, r[0]) for r in rows]
                )
            return [_record(row) for row in rows]

        return await self.db.run(claim)

    async def record_progress(self, schedule_id: str, progress: ScheduleProgress) -> None:
        def record(db: sqlite3.Connection) -> None:
            row = db.execute(
                "SELECT recent, version, refusals, latest_run FROM schedules WHERE schedule_id=?", (schedule_id,)
            ).fetchone()
            if row is None:
                return
            recent = [tuple(entry) for entry in json.loads(row[0])]
            entries = [
                *((f, t) for f, t in progress.started),
                *((f, "") for f in progress.skipped),
                *((f, "") for f, _ in progress.refused),
            ]
            recent = sorted([*entries, *recent], key=lambda e: -e[0])[:RECENT_RUNS]
            latest = max([*progress.started, tuple(json.loads(row[3]))], key=lambda run: run[0])  # ties: the new
            refusals = [tuple(entry) for entry in json.loads(row[2])]
            refusals = sorted([*progress.refused, *refusals], key=lambda e: -e[0])[:RECENT_RUNS]
            with db:
                db.execute(
                    "UPDATE schedules SET recent=?, latest_run=?, refusals=?, runs=runs+?, skipped=skipped+?,"
                    " refused=refused+?, missed=missed+?, last_fire_ms=COALESCE(?, last_fire_ms),"
                    " buffered_ms=COALESCE(?, buffered_ms)"
                    " WHERE schedule_id=?",
                    (
                        json.dumps(recent),
                        json.dumps(list(latest)),
                        json.dumps(refusals),
                        len(progress.started),
                        len(progress.skipped),
                        len(progress.refused),
                        progress.missed,
                        progress.last_fire_ms,
                        progress.buffered_ms,
                        schedule_id,
                    ),
                )
                if progress.due_ms is not None and row[1] == progress.version:
                    db.execute(
                        "UPDATE schedules SET due_ms=? WHERE schedule_id=?", (_due(progress.due_ms), schedule_id)
                    )

        await self.db.run(record)

    async def schedule_count(self) -> int:
        rows = await self.db.rows("SELECT COUNT(*) FROM schedules")
        return int(rows[0][0])


def _due(due_ms: int) -> int | None:
    return None if due_ms == NEVER else due_ms


def _record(row: Any) -> ScheduleRecord:
    return ScheduleRecord(
        schedule_id=str(row[0]),
        owner=str(row[1]),
        data=bytes(row[2]),
        version=int(row[3]),
        created_ms=int(row[4]),
        runs=int(row[5]),
        skipped=int(row[6]),
        missed=int(row[7]),
        last_fire_ms=int(row[8]),
        buffered_ms=int(row[9]),
        recent=[(int(f), str(t)) for f, t in json.loads(str(row[10]))],
        refused=int(row[11]),
        refusals=[(int(f), str(why)) for f, why in json.loads(str(row[12]))],
        latest_run=stored_run(str(row[13])),
    )
