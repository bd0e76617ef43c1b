"""Rate limits in the embedded store (see RateLimitStore in engine/ports): one process owns the
file, so a take is one transaction on the store's thread."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from mcp_server.engine.ports import Grant, RateLimitSpec
from mcp_server.state.common import now_seconds
from mcp_server.state.rate_math import EPSILON, available, next_tat, wait_for
from mcp_server.state.sqlite.database import SqliteDatabase

FORGET_EVERY = 64


class SqliteRateLimits:
    """RateLimitStore on SQLite."""

    def __init__(self, db: SqliteDatabase) -> None:
        self.db = db
        self._takes = 0  # on the store's thread only

    async def put_rate_limit(self, spec: RateLimitSpec) -> None:
        await self.db.write(
            "INSERT INTO rate_limits (key, lim, period, burst) VALUES (?,?,?,?)"
            " ON CONFLICT (key) DO UPDATE SET lim=excluded.lim, period=excluded.period, burst=excluded.burst",
            (spec.key, spec.limit, spec.period, spec.burst),
        )

    async def delete_rate_limit(self, key: str) -> bool:
        def delete(db: sqlite3.Connection) -> bool:
            with db:
                db.execute("DELETE FROM rate_grants WHERE key=?", (key,))
                return bool(db.execute("DELETE FROM rate_limits WHERE key=?", (key,)).rowcount)

        return await self.db.run(delete)

    async def list_rate_limits(self) -> list[tuple[RateLimitSpec, float]]:
        def read(db: sqlite3.Connection) -> list[tuple[RateLimitSpec, float]]:
            now = now_seconds()
            found = []
            for key, limit, period, burst, tat in db.execute(
                "SELECT key, lim, period, burst, tat FROM rate_limits ORDER BY key"
            ).fetchall():
                spec = RateLimitSpec(key, limit, period, burst)
                found.append((spec, available(spec, tat, _grants(db, spec, now), now)))
            return found

        return await self.db.run(read)

    async def take_units(self, asks: Sequence[tuple[str, float]]) -> Grant:
        def take(db: sqlite3.Connection) -> Grant:
            now = now_seconds()
            granted = []
            with db:
                for key, units in asks:
                    row = db.execute(
                        "SELECT lim, period, burst, tat, used FROM rate_limits WHERE key=?", (key,)
                    ).fetchone()
                    if row is None:
                        continue  # no limit: unlimited
                    spec = RateLimitSpec(key, row[0], row[1], row[2])
                    if units > spec.capacity:
                        return Grant(False, key=key, too_large=True)
                    used = float(row[4])
                    self._takes += 1
                    # grants older than the window are forgotten when they may be in the way (and
                    # now and then, to keep the table small); until then `used` only overstates
                    if used + units > spec.capacity - EPSILON or self._takes % FORGET_EVERY == 0:
                        used -= _forget(db, key, now - spec.period)
                    # the grants of the window are read only when they may be in the way
                    grants = _grants(db, spec, now) if used + units > spec.capacity - EPSILON else []
                    wait = wait_for(spec, row[3], grants, now, units)
                    if wait > 0:
                        return Grant(False, wait, key)
                    granted.append((spec, row[3], used, units))
                for spec, tat, used, units in granted:
                    db.execute(
                        "UPDATE rate_limits SET tat=?, used=? WHERE key=?",
                        (next_tat(spec, tat, now, units), used + units, spec.key),
                    )
                    db.execute("INSERT INTO rate_grants VALUES (?,?,?)", (spec.key, now, units))
            return Grant(True)

        return await self.db.run(take)


def _forget(db: sqlite3.Connection, key: str, before: float) -> float:
    """Drop a key's grants older than the window; the units they held."""
    expired = db.execute(
        "SELECT COALESCE(SUM(units), 0), COUNT(*) FROM rate_grants WHERE key=? AND at<=?", (key, before)
    )
    units, count = expired.fetchone()
    if count:
        db.execute("DELETE FROM rate_grants WHERE key=? AND at<=?", (key, before))
    return float(units)


def _grants(db: sqlite3.Connection, spec: RateLimitSpec, now: float) -> list[tuple[float, float]]:
    rows = db.execute(
        "SELECT at, units FROM rate_grants WHERE key=? AND at>? ORDER BY at", (spec.key, now - spec.period)
    ).fetchall()
    return [(float(at), float(units)) for at, units in rows]
