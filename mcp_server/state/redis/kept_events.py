"""Kept events on Redis (see KeptEventStore in engine/ports): a sorted set per event name and
slot, scored by publish time, in a slot of its own (`{P}{kept:<name>|<slot>}`), trimmed by time
and count and expiring with its newest event; and per name a sorted set of its key slots by when
each was last kept into (`{P}{kept:<name>|~keys}`), which drops the oldest past the cap."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from mcp_server.engine.ports.kept_events import KEPT_PER_SLOT, KEY_SLOT_PREFIX, KEYS_SLOT, KeptEvent
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


# KEYS: a name's key slots; ARGV: the slot kept into, time ms, ttl ms, the most slots -> the slots dropped
KEEP_KEY = """
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
local over = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[4])
if over <= 0 then return {} end
local dropped = {}
for i, member in ipairs(redis.call('ZPOPMIN', KEYS[1], over)) do
  if i % 2 == 1 then dropped[#dropped + 1] = member end
end
return dropped
"""


class RedisKeptEvents:
    """KeptEventStore on Redis."""

    def __init__(self, conn: RedisConnection) -> None:
        self.conn = conn
        self._keep = conn.register(KEEP)
        self._keep_key = conn.register(KEEP_KEY)

    def _key(self, name: str, slot: str) -> str:
        return f"{self.conn.layout.prefix}{{kept:{name}|{slot}}}"

    async def keep(self, name: str, slots: Sequence[str], event: KeptEvent, keep_seconds: float, max_keys: int) -> None:
        keep_ms = max(1, int(keep_seconds * 1000))
        oldest = int(now_seconds() * 1000) - keep_ms
        args = [event.time_ms, event.encode(), oldest, KEPT_PER_SLOT, keep_ms]
        calls = [self.conn.script(self._keep, [self._key(name, slot)], args) for slot in slots]
        keyed = [slot for slot in slots if slot.startswith(KEY_SLOT_PREFIX)] if max_keys > 0 else []
        for slot in keyed:
            calls.append(
                self.conn.script(self._keep_key, [self._key(name, KEYS_SLOT)], [slot, event.time_ms, keep_ms, max_keys])
            )
        replies = await self.conn.do(asyncio.gather(*calls))
        dropped = [bytes(slot).decode() for reply in replies[len(slots) :] for slot in reply]
        if dropped:
            await self.conn.do(asyncio.gather(*(self.conn.r.unlink(self._key(name, slot)) for slot in dropped)))

    async def kept(self, name: str, slot: str, since_ms: int) -> list[KeptEvent]:
        key = self._key(name, slot)
        if self.conn.lane is not None:
            found = await self.conn.do(self.conn.lane.call("ZRANGEBYSCORE", key, since_ms, "+inf"))
        else:
            found = await self.conn.do(self.conn.r.zrangebyscore(key, since_ms, "+inf"))
        return [KeptEvent.decode(bytes(raw)) for raw in found]
