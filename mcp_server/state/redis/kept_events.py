"""Kept events on Redis (see KeptEventStore in engine/ports): a sorted set per event name and
slot, scored by publish time, in a slot of its own (`{P}{kept:<name>|<slot>}`), trimmed by time
and count and expiring with its newest event."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from mcp_server.engine.ports.kept_events import KEPT_PER_SLOT, KeptEvent
from mcp_server.state.common import now_seconds
from mcp_server.state.redis.connection import RedisConnection

# KEYS: the set; ARGV: time ms, the event, the oldest time kept (ms), the count kept, ttl ms
KEEP = """
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[3])
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -tonumber(ARGV[4]) - 1)
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"""


class RedisKeptEvents:
    """KeptEventStore on Redis."""

    def __init__(self, conn: RedisConnection) -> None:
        self.conn = conn
        self._keep = conn.register(KEEP)

    def _key(self, name: str, slot: str) -> str:
        return f"{self.conn.layout.prefix}{{kept:{name}|{slot}}}"

    async def keep(self, name: str, slots: Sequence[str], event: KeptEvent, keep_seconds: float) -> None:
        keep_ms = max(1, int(keep_seconds * 1000))
        oldest = int(now_seconds() * 1000) - keep_ms
        args = [event.time_ms, event.encode(), oldest, KEPT_PER_SLOT, keep_ms]
        calls = (self.conn.script(self._keep, [self._key(name, slot)], args) for slot in slots)
        await self.conn.do(asyncio.gather(*calls))

    async def kept(self, name: str, slot: str, since_ms: int) -> list[KeptEvent]:
        key = self._key(name, slot)
        if self.conn.lane is not None:
            found = await self.conn.do(self.conn.lane.call("ZRANGEBYSCORE", key, since_ms, "+inf"))
        else:
            found = await self.conn.do(self.conn.r.zrangebyscore(key, since_ms, "+inf"))
        return [KeptEvent.decode(bytes(raw)) for raw in found]
