"""Bulk actions in the embedded store (see BulkActionStore in engine/ports): a row each; one process
owns the file, so each change is one transaction on the store's thread."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from typing import Any

from mcp_server.engine.ports.bulk import BulkRecord
from mcp_server.errors import bulk_actions_running
from mcp_server.state.common import now_seconds
from mcp_server.state.sqlite.database import SqliteDatabase

COLUMNS = "action_id, owner, data, cursor, version, running, admin, request_id"


class SqliteBulkActions:
    """BulkActionStore on SQLite."""

    def __init__(self, db: SqliteDatabase) -> None:
        self.db = db

    async def create_bulk_action(self, record: BulkRecord, max_running: int) -> tuple[BulkRecord, bool]:
        def create(db: sqlite3.Connection) -> tuple[BulkRecord, bool]:
            if record.request_id:
                row = db.execute(
                    f"SELECT {COLUMNS} FROM bulk_actions WHERE owner=? AND request_id=?",
                    (record.owner, record.request_id),
                ).fetchone()
                if row is not None:
                    return _record(row), False
            running = db.execute(
                "SELECT COUNT(*) FROM bulk_actions WHERE owner=? AND running=1", (record.owner,)
            ).fetchone()[0]
            if running >= max_running:
                raise bulk_actions_running(record.owner, max_running)
            with db:
                db.execute(
                    f"INSERT INTO bulk_actions ({COLUMNS}, due_ms) VALUES (?,?,?,?,1,1,?,?,?)",
                    (
                        record.action_id,
                        record.owner,
                        record.data,
                        record.cursor,
                        int(record.admin),
                        record.request_id,
                        int(now_seconds() * 1000),
                    ),
                )
            return replace(record, version=1, running=True), True

        return await self.db.run(create)

    async def get_bulk_action(self, action_id: str) -> BulkRecord | None:
        rows = await self.db.rows(f"SELECT {COLUMNS} FROM bulk_actions WHERE action_id=?", (action_id,))
        return _record(rows[0]) if rows else None

    async def list_bulk_actions(self, owner: str | None, before: str, limit: int) -> list[BulkRecord]:
        bound = before or "\U0010ffff"
        if owner is None:
            query, args = "action_id<?", [bound]
        else:
            query, args = "owner=? AND action_id<?", [owner, bound]
        rows = await self.db.rows(
            f"SELECT {COLUMNS} FROM bulk_actions WHERE {query} ORDER BY action_id DESC LIMIT ?", (*args, limit)
        )
        return [_record(row) for row in rows]

    async def claim_bulk_actions(self, now_ms: int, lease_ms: int, limit: int) -> list[BulkRecord]:
        def claim(db: sqlite3.Connection) -> list[BulkRecord]:
            with db:
                rows = db.execute(
                    f"SELECT {COLUMNS} FROM bulk_actions WHERE running=1 AND due_ms<=? ORDER BY due_ms LIMIT ?",
                    (now_ms, limit),
                ).fetchall()
                db.executemany(
                    "UPDATE bulk_actions SET due_ms=?, version=version+1 WHERE action_id=?",
                    [(now_ms + lease_ms, row[0]) for row in rows],
                )
            return [replace(_record(row), version=row[4] + 1) for row in rows]

        return await self.db.run(claim)

    async def save_bulk_action(self, record: BulkRecord, due_ms: int) -> BulkRecord | None:
        def save(db: sqlite3.Connection) -> BulkRecord | None:
            with db:
                cursor = db.execute(
                    "UPDATE bulk_actions SET data=?, cursor=?, running=?, version=version+1, due_ms=?, ended_ms=?"
                    " WHERE action_id=? AND version=?",
                    (
                        record.data,
                        record.cursor,
                        int(record.running),
                        due_ms if record.running else None,
                        None if record.running else int(now_seconds() * 1000),
                        record.action_id,
                        record.version,
                    ),
                )
            if cursor.rowcount != 1:
                return None
            return replace(record, version=record.version + 1)

        return await self.db.run(save)

    async def purge_bulk_actions(self, ended_before_ms: int, limit: int) -> int:
        def purge(db: sqlite3.Connection) -> int:
            with db:
                cursor = db.execute(
                    "DELETE FROM bulk_actions WHERE action_id IN (SELECT action_id FROM bulk_actions"
                    " WHERE running=0 AND ended_ms<? LIMIT ?)",
                    (ended_before_ms, limit),
                )
            return int(cursor.rowcount)

        return await self.db.run(purge)


def _record(row: Any) -> BulkRecord:
    return BulkRecord(
        str(row[0]), str(row[1]), bytes(row[2]), str(row[3]), int(row[4]), bool(row[5]), bool(row[6]), str(row[7])
    )
