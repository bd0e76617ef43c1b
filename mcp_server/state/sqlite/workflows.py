"""Workflow versions in the embedded store (see WorkflowStore in engine/ports)."""

from __future__ import annotations

import sqlite3
import time

from mcp_sdk.proto import workflow_pb2
from mcp_server.engine.events import now
from mcp_server.engine.ports.workflows import EventInterest
from mcp_server.state.common import (
    decode_token,
    encode_token,
)
from mcp_server.state.sqlite.database import SqliteDatabase, record_waited_events


class SqliteWorkflows:
    """WorkflowStore on SQLite: a row per version."""

    def __init__(self, db: SqliteDatabase) -> None:
        self.db = db

    async def create_workflow(self, workflow: workflow_pb2.Workflow) -> workflow_pb2.Workflow:
        stored = workflow_pb2.Workflow()
        stored.CopyFrom(workflow)
        stored.ClearField("delete_time")
        stored.create_time.CopyFrom(now())

        def insert(db: sqlite3.Connection) -> workflow_pb2.Workflow:
            with db:
                row = db.execute(
                    "SELECT COALESCE(MAX(version), 0) FROM workflows WHERE workflow_id=?", (workflow.workflow_id,)
                ).fetchone()
                stored.version = int(row[0]) + 1
                db.execute(
                    "INSERT INTO workflows (workflow_id, version, data) VALUES (?, ?, ?)",
                    (stored.workflow_id, stored.version, stored.SerializeToString()),
                )
                record_waited_events(db, stored)
                db.execute("DELETE FROM event_triggers WHERE workflow_id=?", (stored.workflow_id,))
                db.executemany(
                    "INSERT INTO event_triggers (event, workflow_id, version) VALUES (?, ?, ?)",
                    [(event, stored.workflow_id, stored.version) for event in {t.event for t in stored.triggers}],
                )
            return stored

        return await self.db.run(insert)

    async def get_workflow(
        self, workflow_id: str, version: int = 0, deleted_too: bool = False
    ) -> workflow_pb2.Workflow | None:
        args: tuple[object, ...]
        if version:
            sql, args = (
                "SELECT data, deleted_at FROM workflows WHERE workflow_id=? AND version=?",
                (workflow_id, version),
            )
        else:
            sql, args = (
                "SELECT data, deleted_at FROM workflows WHERE workflow_id=? AND deleted_at IS NULL"
                " ORDER BY version DESC LIMIT 1",
                (workflow_id,),
            )
        rows = await self.db.rows(sql, args)
        if not rows or (rows[0][1] is not None and not deleted_too) or not rows[0][0]:
            return None  # none, deleted, or purged (its row kept, emptied, as the id's last number)
        workflow = workflow_pb2.Workflow.FromString(rows[0][0])
        if rows[0][1] is not None:
            workflow.delete_time.FromNanoseconds(int(rows[0][1] * 1e9))
        return workflow

    async def live_version(self, workflow_id: str, version: int = 0) -> int:
        if version:
            sql = "SELECT version FROM workflows WHERE workflow_id=? AND version=? AND deleted_at IS NULL"
            rows = await self.db.rows(sql, (workflow_id, version))
        else:
            sql = "SELECT MAX(version) FROM workflows WHERE workflow_id=? AND deleted_at IS NULL"
            rows = await self.db.rows(sql, (workflow_id,))
        return int(rows[0][0] or 0) if rows else 0

    async def list_workflows(self, page_size: int, page_token: str) -> tuple[list[workflow_pb2.Workflow], str]:
        after = decode_token(page_token)
        rows = await self.db.rows(
            "SELECT w.data FROM workflows w JOIN (SELECT workflow_id, MAX(version) v FROM workflows "
            "WHERE workflow_id > ? AND deleted_at IS NULL GROUP BY workflow_id) l"
            " ON w.workflow_id=l.workflow_id AND w.version=l.v ORDER BY w.workflow_id LIMIT ?",
            (after, page_size + 1),
        )
        workflows = [workflow_pb2.Workflow.FromString(r[0]) for r in rows[:page_size]]
        token = encode_token(workflows[-1].workflow_id) if len(rows) > page_size else ""
        return workflows, token

    async def subscribers(self, event: str) -> list[tuple[str, int]]:
        return await self.db.run(lambda db: _subscribers(db, event))

    async def event_interest(self, event: str) -> EventInterest:
        def read(db: sqlite3.Connection) -> EventInterest:
            waited = db.execute("SELECT lookback FROM waited_events WHERE event=?", (event,)).fetchone()
            cancels = db.execute("SELECT 1 FROM cancelling_events WHERE event=?", (event,)).fetchone() is not None
            return EventInterest(_subscribers(db, event), float(waited[0]) if waited else None, cancels)

        return await self.db.run(read)

    async def delete_workflow(self, workflow_id: str) -> int:
        def delete(db: sqlite3.Connection) -> int:
            with db:
                marked = db.execute(
                    "UPDATE workflows SET deleted_at=? WHERE workflow_id=? AND deleted_at IS NULL",
                    (time.time(), workflow_id),
                ).rowcount
                db.execute("DELETE FROM event_triggers WHERE workflow_id=?", (workflow_id,))
            return int(marked)

        return await self.db.run(delete)

    async def purge_deleted(self, at_most: int) -> list[str]:
        """A workflow's deleted versions go once its last delete is past the retention, but for
        the row of its highest version, which stays emptied when deleted: the next create numbers
        on after it."""
        cutoff = time.time() - self.db.retention_seconds

        def purge(db: sqlite3.Connection) -> list[str]:
            with db:
                found = db.execute(
                    "SELECT w.workflow_id FROM workflows w WHERE w.deleted_at IS NOT NULL AND length(w.data) > 0"
                    " GROUP BY w.workflow_id HAVING MAX(w.deleted_at) < ?"
                    " AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.workflow_id = w.workflow_id) LIMIT ?",
                    (cutoff, at_most),
                ).fetchall()
                for (workflow_id,) in found:
                    last = db.execute("SELECT MAX(version) FROM workflows WHERE workflow_id=?", (workflow_id,))
                    (highest,) = last.fetchone()
                    db.execute(
                        "DELETE FROM workflows WHERE workflow_id=? AND deleted_at IS NOT NULL AND version < ?",
                        (workflow_id, highest),
                    )
                    db.execute(
                        "UPDATE workflows SET data=x'' WHERE workflow_id=? AND deleted_at IS NOT NULL AND version = ?",
                        (workflow_id, highest),
                    )
            return [str(row[0]) for row in found]

        return await self.db.run(purge)


def _subscribers(db: sqlite3.Connection, event: str) -> list[tuple[str, int]]:
    rows = db.execute(
        "SELECT t.workflow_id, t.version FROM event_triggers t WHERE t.event=? AND t.version = ("
        "SELECT MAX(version) FROM workflows w WHERE w.workflow_id=t.workflow_id AND w.deleted_at IS NULL)"
        " ORDER BY t.workflow_id",
        (event,),
    ).fetchall()
    return [(str(row[0]), int(row[1])) for row in rows]
