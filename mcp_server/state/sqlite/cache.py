"""The step cache in the embedded store: a row per key with its expiry; expired rows are
dropped as they are read and, now and then, all at once."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator

from mcp_server.engine.ports.cache import CachedOutput
from mcp_server.state.common import now_seconds
from mcp_server.state.sqlite.database import SqliteDatabase

SWEEP_EVERY = 1000


class SqliteStepCache:
    """StepCache on SQLite."""

    def __init__(self, db: SqliteDatabase) -> None:
        self.db = db
        self._puts = 0  # on the store's thread only

    async def get_output(self, key: str) -> CachedOutput | None:
        rows = await self.db.rows(
            "SELECT task_id, output, expires FROM step_cache WHERE key=? AND expires>?", (key, now_seconds())
        )
        return CachedOutput(str(rows[0][0]), bytes(rows[0][1]), float(rows[0][2])) if rows else None

    async def put_output(self, key: str, entry: CachedOutput, ttl: float) -> None:
        def put(db: sqlite3.Connection) -> None:
            now = now_seconds()
            with db:
                db.execute(
                    "INSERT OR REPLACE INTO step_cache VALUES (?,?,?,?)", (key, entry.task_id, entry.output, now + ttl)
                )
                self._puts += 1
                if self._puts % SWEEP_EVERY == 0:
                    db.execute("DELETE FROM step_cache WHERE expires<=?", (now,))

        await self.db.run(put)

    async def remove_outputs_of(self, task_id: str) -> int:
        def remove(db: sqlite3.Connection) -> int:
            with db:
                return int(db.execute("DELETE FROM step_cache WHERE task_id=?", (task_id,)).rowcount)

        return await self.db.run(remove)

    async def removed_tasks(self) -> AsyncIterator[str]:
        """None to hear of: one server uses a SQLite file (state/sqlite/file_lock.py), and its own
        removals drop its copies as they happen."""
        nothing: tuple[str, ...] = ()
        for task_id in nothing:
            yield task_id
