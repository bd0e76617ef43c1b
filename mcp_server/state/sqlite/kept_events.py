"""Kept events in the embedded store (see KeptEventStore in engine/ports): the `kept_events`
table, trimmed by count and time in the slot kept into; and `kept_slots`, when each slot was last
kept into and when it goes (its newest event's time plus its keep time), which drops a name's
oldest key slots past the cap and, on each keep, a few slots of any name that have gone."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from mcp_server.engine.ports.kept_events import ANY_KEY_SLOT, KEPT_PER_SLOT, KeptEvent
from mcp_server.state.common import now_seconds
from mcp_server.state.sqlite.database import SqliteDatabase

# slots that have gone, dropped by one keep (more go with the next)
GONE_PER_KEEP = 100


class SqliteKeptEvents:
    """KeptEventStore on SQLite."""

    def __init__(self, db: SqliteDatabase) -> None:
        self.db = db

    async def keep(self, name: str, slots: Sequence[str], event: KeptEvent, keep_seconds: float, max_keys: int) -> None:
        now_ms = int(now_seconds() * 1000)
        keep_ms = max(1, int(keep_seconds * 1000))
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
                    db.execute(
                        "DELETE FROM kept_events WHERE name=? AND slot=? AND time_ms < ?",
                        (name, slot, now_ms - keep_ms),
                    )
                    db.execute(
                        "INSERT INTO kept_slots VALUES (?,?,?,?) ON CONFLICT (name, slot) DO UPDATE SET"
                        " last_ms=excluded.last_ms, gone_ms=excluded.gone_ms",
                        (name, slot, event.time_ms, event.time_ms + keep_ms),
                    )
                dropped = []
                if max_keys > 0:
                    dropped = db.execute(
                        "SELECT name, slot FROM kept_slots WHERE name=? AND slot != ?"
                        " ORDER BY last_ms DESC LIMIT -1 OFFSET ?",
                        (name, ANY_KEY_SLOT, max_keys),
                    ).fetchall()
                dropped += db.execute(
                    "SELECT name, slot FROM kept_slots WHERE gone_ms < ? LIMIT ?", (now_ms, GONE_PER_KEEP)
                ).fetchall()
                db.executemany("DELETE FROM kept_events WHERE name=? AND slot=?", dropped)
                db.executemany("DELETE FROM kept_slots WHERE name=? AND slot=?", dropped)

        await self.db.run(keep)

    async def kept(self, name: str, slot: str, since_ms: int) -> list[KeptEvent]:
        rows = await self.db.rows(
            "SELECT record FROM kept_events WHERE name=? AND slot=? AND time_ms >= ? ORDER BY time_ms, rowid",
            (name, slot, since_ms),
        )
        return [KeptEvent.decode(bytes(r[0])) for r in rows]
