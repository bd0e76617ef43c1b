"""Rate limits on Redis (see RateLimitStore in engine/ports): every key's limit and state in the
slot tagged {rl}, so a call's asks are taken in one script (ratelimits_lua.py), atomically for
every replica."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from redis.exceptions import NoPermissionError

from mcp_server.engine.ports import MAX_WOKEN, WAITER_GRACE_SECONDS, Grant, KeyRoom, RateLimitSpec, waiter_task
from mcp_server.errors import Unavailable
from mcp_server.state.redis import ratelimits_lua as lua
from mcp_server.state.redis.channels import follow_channel
from mcp_server.state.redis.connection import RedisConnection

LIST_CHUNK = 250  # limits whose room one script reads (and lines one pipeline reads)
TEMPLATE = "*"  # a key ending so is a template (see protocols/rate_limits.py)


class RedisRateLimits:
    """RateLimitStore on Redis."""

    def __init__(self, conn: RedisConnection) -> None:
        self.conn = conn
        self.keys = conn.layout.rate_limits
        self.grants = conn.layout.rate_grants_prefix
        self.states = conn.layout.rate_state_prefix
        self.lines = conn.layout.rate_lines_prefix
        self.channel = conn.layout.rate_limit_channel
        self._take = conn.register(lua.TAKE_UNITS)
        self._leave = conn.register(lua.LEAVE_LINES)
        self._list = conn.register(lua.LIST_LIMITS)
        self._read = conn.register(lua.READ_LIMIT)
        self._put = conn.register(lua.PUT_LIMIT)

    async def put_rate_limit(self, spec: RateLimitSpec) -> None:
        """Over a limit the key had, what was granted counts at the new pace (PUT_LIMIT): a
        template's own keys too, each that was granted more than it could take now (the grant
        script keeps them in a zset per template)."""
        value = f"{spec.limit!r}|{spec.period * 1000!r}|{spec.burst!r}"
        ahead = self._ahead(spec.key) if spec.key.endswith(TEMPLATE) else ""
        await self.conn.do(self.conn.script(self._put, list(self.keys), [spec.key, value, self.states, ahead]))

    def _ahead(self, template: str) -> str:
        """The zset of the template's keys whose GCRA time is ahead of now (ratelimits_lua.py)."""
        return f"{self.lines}ahead:{template}"

    async def delete_rate_limit(self, key: str) -> bool:
        async with self.conn.pipeline(transaction=True) as pipe:
            pipe.hdel(self.keys[0], key)
            pipe.hdel(self.keys[1], key)
            pipe.hdel(self.keys[2], key)
            pipe.delete(self.grants + key)
            pipe.delete(*(f"{self.lines}{part}:{key}" for part in "osu"), self._ahead(key))
            pipe.srem(self.lines + "keys", key)
            removed = await self.conn.do(pipe.execute())
        return bool(removed[0])

    async def rate_limit_keys(self) -> frozenset[str]:
        return frozenset(key.decode() for key in await self.conn.do(self.conn.r.hkeys(self.keys[0])))

    async def list_rate_limits(self) -> list[tuple[RateLimitSpec, float]]:
        """Every limit with its room, LIST_CHUNK keys a script: each script holds Redis for its
        length, and one over every limit held it 34 ms among 5,000 (every replica's gauges, every
        ListRateLimits)."""
        found = []
        cursor = 0
        while True:
            cursor, listed = await self.conn.do(self.conn.r.hscan(self.keys[0], cursor, count=LIST_CHUNK))
            if listed:
                reply = await self.conn.do(self.conn.script(self._list, list(self.keys), [self.grants, *listed]))
                for i in range(0, len(reply), 3):
                    limit, period_ms, burst = (float(part) for part in reply[i + 1].decode().split("|"))
                    spec = RateLimitSpec(reply[i].decode(), limit, period_ms / 1000, burst)
                    found.append((spec, float(reply[i + 2])))
            if not cursor:
                break
        unique = {spec.key: (spec, room) for spec, room in found}  # HSCAN may name a key twice
        return sorted(unique.values(), key=lambda item: item[0].key)

    async def read_rate_limit(self, key: str, limit_key: str) -> KeyRoom | None:
        args = [self.grants, self.states, key, limit_key, self.lines]
        reply = await self.conn.do(self.conn.script(self._read, list(self.keys), args))
        if not reply:
            return None
        limit, period_ms, burst = (float(part) for part in reply[0].decode().split("|"))
        next_unit = float(reply[2])
        spec = RateLimitSpec(limit_key, limit, period_ms / 1000, burst)
        return KeyRoom(spec, float(reply[1]), next_unit / 1000 if next_unit >= 0 else None, int(reply[3]))

    async def take_units(self, asks: Sequence[tuple[str, float, str]], waiter: str = "", priority: int = 0) -> Grant:
        grace = repr(WAITER_GRACE_SECONDS * 1000)
        args: list[Any] = [self.grants, self.states, self.lines, waiter, grace, str(priority)]
        for key, units, limit_key in asks:
            args += [key, repr(float(units)), limit_key]
        reply = await self.conn.do(self.conn.script(self._take, list(self.keys), args))
        outcome = reply[0].decode()
        if outcome == "ok":
            return Grant(True)
        if outcome == "too_large":
            return Grant(False, key=reply[1].decode(), too_large=True)
        return Grant(False, float(reply[2]) / 1000, reply[1].decode())

    async def leave_lines(self, keys: Sequence[str], waiter: str) -> None:
        await self.conn.do(self.conn.script(self._leave, list(self.keys), [self.lines, waiter, *keys]))

    async def waiting_tasks(self, limit_key: str, at_most: int = MAX_WOKEN) -> list[str]:
        keys = await self._keys_with_lines(limit_key[: -len(TEMPLATE)]) if limit_key.endswith(TEMPLATE) else [limit_key]
        tasks: dict[str, None] = {}
        for start in range(0, len(keys), LIST_CHUNK):
            chunk = keys[start : start + LIST_CHUNK]
            async with self.conn.pipeline(transaction=False) as pipe:
                for key in chunk:
                    pipe.zrange(f"{self.lines}o:{key}", 0, at_most - 1)
                lines = await self.conn.do(pipe.execute())
            gone = [key for key, members in zip(chunk, lines, strict=True) if not members]
            if gone:  # lines that expired unused, or emptied by their waiters' grace running out
                await self.conn.do(self.conn.r.srem(self.lines + "keys", *gone))
            for members in lines:  # each member is `<order>|<waiter>` (ratelimits_lua.py)
                tasks.update((waiter_task(member.decode().split("|", 1)[1]), None) for member in members)
            if len(tasks) >= at_most:
                break
        return list(tasks)[:at_most]

    async def _keys_with_lines(self, prefix: str) -> list[str]:
        """The keys starting with `prefix` that have (or had, if it expired unused) a line."""
        members = await self.conn.do(self.conn.r.smembers(self.lines + "keys"))
        return sorted(key for raw in members if (key := raw.decode()).startswith(prefix))

    async def announce_change(self, limit_key: str) -> None:
        try:
            await self.conn.do(self.conn.r.publish(self.channel, limit_key))
        except Unavailable as exc:
            if not isinstance(
                exc.__cause__, NoPermissionError
            ):  # an ACL without pub/sub: the others' waiters ask at their turn
                raise

    def limit_changes(self) -> AsyncIterator[str]:
        return follow_channel(
            self.conn, self.channel, "waiting calls ask at their turn after a limit changes elsewhere"
        )
