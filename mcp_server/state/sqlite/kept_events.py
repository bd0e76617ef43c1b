"""Kept events in the embedded store (see KeptEventStore in engine/ports): the `kept_events`
table, trimmed by time (every slot, on each keep) and count (the slot kept into)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from mcp_server.engine.ports.kept_events import KEPT_PER_SLOT, KeptEvent
from mcp_server.state.common import now_seconds
from mcp_server.state.sqlite.database import SqliteDatabase


class SqliteKeptEvents:
    """KeptEventStore on SQLite."""

    def __init__(self, db: SqliteDatabase) -> None:
        self.db = db

    async def keep(self, name: str, slots: Sequence[str], event: KeptEvent, keep_seconds: float) -> None:
        oldest = int(now_seconds() * 1000) - max(1, int(keep_seconds * 1000))
        record = event.encode()

        def keep(db: sqlite3.Connection) -> None:
            with db:
                for slot in slots:
                    db.execute("INSERT INTO kept_events VALUES (?,?,?,?)", (name, slot, event.time_ms, record))
                    db.execute(
                        "DELETE FROM kept_events WHERE rowid IN (SELECT rowid FROM kept_events WHERE name=? AND slot=?"
                        " ORDER BY time_ms DESC LIMIT -1 OFFSET ?)",
                        (name, slot, KEPT_PER_SLOT),
                    )
                db.execute("DELETE FROM kept_events WHERE time_ms < ?", (oldest,))  # of every name and slot

        await self.db.run(keep)

    async def kept(self, name: str, slot: str, since_ms: int) -> list[KeptEvent]:
        rows = await self.db.rows(
            "SELECT record FROM kept_events WHERE name=? AND slot=? AND time_ms >= ? ORDER BY time_ms, rowid",
            (name, slot, since_ms),
        )
        return [KeptEvent.decode(bytes(r[0])) for r in rows]
