"""Rate limits in the embedded store (see RateLimitStore in engine/ports): one process owns the
file, so a take is one transaction on the store's thread."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Sequence

from mcp_server.engine.ports import MAX_WOKEN, Grant, KeyRoom, RateLimitSpec, waiter_task
from mcp_server.state.common import now_seconds
from mcp_server.state.rate_math import EPSILON, available, next_tat, wait_for
from mcp_server.state.rate_queue import WaiterLines
from mcp_server.state.sqlite.database import SqliteDatabase

FORGET_EVERY = 64


class SqliteRateLimits:
    """RateLimitStore on SQLite."""

    def __init__(self, db: SqliteDatabase) -> None:
        self.db = db
        self._takes = 0  # on the store's thread only
        # the calls waiting for units, in line by key (on the store's thread only): one process
        # owns the file, so the line lives in its memory, and after a restart forms again as the
        # waiting calls ask
        self.lines = WaiterLines()

    async def put_rate_limit(self, spec: RateLimitSpec) -> None:
        """Over a limit the key had, what was granted under the old one counts under the new one
        (its GCRA time, when ahead of now, rescaled to the new pace, and for a template those of
        the keys under it; see PUT_LIMIT on Redis)."""

        def put(db: sqlite3.Connection) -> None:
            with db:
                old = db.execute("SELECT lim, period, tat FROM rate_limits WHERE key=?", (spec.key,)).fetchone()
                db.execute(
                    "INSERT INTO rate_limits (key, lim, period, burst) VALUES (?,?,?,?)"
                    " ON CONFLICT (key) DO UPDATE SET lim=excluded.lim, period=excluded.period, burst=excluded.burst",
                    (spec.key, spec.limit, spec.period, spec.burst),
                )
                if old is None:
                    return
                now = now_seconds()
                scale = (spec.period / spec.limit) / (float(old[1]) / float(old[0]))
                if float(old[2]) > now:
                    db.execute(
                        "UPDATE rate_limits SET tat=? WHERE key=?", (now + (float(old[2]) - now) * scale, spec.key)
                    )
                if spec.key.endswith("*"):  # a template: the keys under it keep their own GCRA times
                    prefix = spec.key[:-1]
                    db.execute(
                        "UPDATE rate_state SET tat = ? + (tat - ?) * ? WHERE substr(key, 1, ?) = ? AND tat > ?",
                        (now, now, scale, len(prefix), prefix, now),
                    )

        await self.db.run(put)

    async def delete_rate_limit(self, key: str) -> bool:
        def delete(db: sqlite3.Connection) -> bool:
            with db:
                db.execute("DELETE FROM rate_grants WHERE key=?", (key,))
                return bool(db.execute("DELETE FROM rate_limits WHERE key=?", (key,)).rowcount)

        return await self.db.run(delete)

    async def rate_limit_keys(self) -> frozenset[str]:
        return frozenset(str(row[0]) for row in await self.db.rows("SELECT key FROM rate_limits"))

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

    async def read_rate_limit(self, key: str, limit_key: str) -> KeyRoom | None:
        def read(db: sqlite3.Connection) -> KeyRoom | None:
            found = db.execute("SELECT lim, period, burst, tat FROM rate_limits WHERE key=?", (limit_key,)).fetchone()
            if found is None:
                return None
            now = now_seconds()
            tat = _templated_state(db, key)[0] if limit_key != key else float(found[3])
            # the grants of `key` (a templated key's are kept under its own name)
            grants = _grants(db, RateLimitSpec(key, found[0], found[1], found[2]), now)
            spec = RateLimitSpec(limit_key, found[0], found[1], found[2])
            next_unit = wait_for(spec, tat, grants, now, 1) if spec.capacity >= 1 - EPSILON else None
            return KeyRoom(spec, available(spec, tat, grants, now), next_unit, self.lines.waiting(key, now))

        return await self.db.run(read)

    async def take_units(self, asks: Sequence[tuple[str, float, str]], waiter: str = "", priority: int = 0) -> Grant:
        def take(db: sqlite3.Connection) -> Grant:
            now = now_seconds()
            granted = []
            longest, who = 0.0, ""
            with db:
                for key, units, limit_key in asks:
                    row = db.execute("SELECT lim, period, burst, tat, used FROM rate_limits WHERE key=?", (limit_key,))
                    found = row.fetchone()
                    if found is None:
                        continue  # no limit: unlimited
                    spec = RateLimitSpec(key, found[0], found[1], found[2])
                    if units > spec.capacity:
                        return Grant(False, key=key, too_large=True)
                    templated = limit_key != key
                    tat, used = _templated_state(db, key) if templated else (float(found[3]), float(found[4]))
                    self._takes += 1
                    # room is left for the units of the calls waiting ahead of this one
                    needed = units + (self.lines.ahead(key, waiter, units, priority, now) if waiter else 0.0)
                    # grants older than the window are forgotten when they may be in the way (and
                    # now and then, to keep the table small); until then `used` only overstates
                    if used + needed > spec.capacity - EPSILON or self._takes % FORGET_EVERY == 0:
                        used = max(0.0, used - _forget(db, key, now - spec.period))
                    # the grants of the window are read only when they may be in the way
                    grants = _grants(db, spec, now) if used + needed > spec.capacity - EPSILON else []
                    wait = wait_for(spec, tat, grants, now, needed)
                    if wait > 0:
                        if waiter:
                            self.lines.wait(key, waiter, units, priority, now, now + wait)
                        if wait > longest:
                            longest, who = wait, key
                        continue
                    granted.append((spec, tat, used, units, templated))
                if longest > 0:
                    return Grant(False, longest, who)
                for spec, tat, used, units, templated in granted:
                    if waiter:
                        self.lines.leave(spec.key, waiter)
                    after = next_tat(spec, tat, now, units)
                    if templated:
                        expires = now + max(after - now, 0.0) + spec.period
                        db.execute(
                            "INSERT OR REPLACE INTO rate_state VALUES (?,?,?,?)",
                            (spec.key, after, used + units, expires),
                        )
                    else:
                        db.execute("UPDATE rate_limits SET tat=?, used=? WHERE key=?", (after, used + units, spec.key))
                    db.execute("INSERT INTO rate_grants VALUES (?,?,?)", (spec.key, now, units))
                if self._takes % FORGET_EVERY == 0:
                    _forget_idle(db, now)
            return Grant(True)

        return await self.db.run(take)

    async def leave_lines(self, keys: Sequence[str], waiter: str) -> None:
        def leave(_: sqlite3.Connection) -> None:
            for key in keys:
                self.lines.leave(key, waiter)

        await self.db.run(leave)

    async def waiting_tasks(self, limit_key: str, at_most: int = MAX_WOKEN) -> list[str]:
        waiters = await self.db.run(lambda _: self.lines.waiters_under(limit_key, at_most))
        return list(dict.fromkeys(waiter_task(waiter) for waiter in waiters))

    async def announce_change(self, limit_key: str) -> None:
        """Nothing to tell: one process owns the file, and its gate wakes its own waiters."""

    async def limit_changes(self) -> AsyncIterator[str]:
        """None: one process owns the file."""
        return
        yield  # an async generator that ends at once


def _templated_state(db: sqlite3.Connection, key: str) -> tuple[float, float]:
    """The GCRA time and window sum of a key under a template's limit (nothing kept: a fresh key)."""
    found = db.execute("SELECT tat, used FROM rate_state WHERE key=?", (key,)).fetchone()
    return (float(found[0]), float(found[1])) if found else (0.0, 0.0)


def _forget_idle(db: sqlite3.Connection, now: float) -> None:
    """Drop the state and grants of templated keys that could hold nothing back any more (no grant
    within their period, their GCRA caught up): keys made from tenant or user ids come and go."""
    db.execute(
        "DELETE FROM rate_grants WHERE key IN (SELECT key FROM rate_state WHERE expires < ?)"
        " AND key NOT IN (SELECT key FROM rate_limits)",
        (now,),
    )
    db.execute("DELETE FROM rate_state WHERE expires < ?", (now,))


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
