"""The step cache on Redis: one string per key, `P{sc}:<key>` would put every entry in one slot,
so entries are `Psc:<key>` (spread over the cluster), each with its own expiry. The keys a task's
steps stored under are listed beside the task (`P{T}:t:<id>:c`), so that its deletion removes
them, and tells every replica (a pub/sub channel), so that each drops the copies it keeps in
memory at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from redis.exceptions import NoPermissionError

from mcp_server.engine.ports.cache import CachedOutput
from mcp_server.errors import Unavailable
from mcp_server.state.redis.channels import follow_channel
from mcp_server.state.redis.connection import RedisConnection

# KEYS: an entry; ARGV: a task id -> 1 when the entry was that task's and is removed, else 0
REMOVE_IF_OWNED = """
local entry = redis.call('GET', KEYS[1])
if entry and string.sub(entry, 1, #ARGV[1] + 1) == ARGV[1] .. '\\0' then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""
# cache keys removed per pipeline (or per batch of concurrent calls on a cluster)
REMOVE_BATCH = 256


class RedisStepCache:
    """StepCache on Redis: SET with PX, GET."""

    def __init__(self, conn: RedisConnection) -> None:
        self.conn = conn
        self.prefix = f"{conn.layout.prefix}sc:"
        self._remove_if_owned = conn.register(REMOVE_IF_OWNED)

    async def get_output(self, key: str) -> CachedOutput | None:
        data = await self.conn.do(self.conn.r.get(self.prefix + key))
        if data is None:
            return None
        task_id, _, rest = bytes(data).partition(b"\0")
        expires, _, output = rest.partition(b"\0")
        return CachedOutput(task_id.decode(), output, int(expires) / 1000)

    async def put_output(self, key: str, entry: CachedOutput, ttl: float) -> None:
        expires = int((time.time() + ttl) * 1000)
        value = entry.task_id.encode() + b"\0" + str(expires).encode() + b"\0" + entry.output
        ms, listed = max(1, int(ttl * 1000)), self.conn.layout.task(entry.task_id).caches
        lane = self.conn.lane
        if lane is not None:  # both in one write, with hiredis (a pipeline costs ~40 us more CPU)
            await self.conn.do(
                asyncio.gather(lane.call("SET", self.prefix + key, value, "PX", ms), lane.call("SADD", listed, key))
            )
            return
        async with self.conn.pipeline() as pipe:  # two slots on a cluster: one round trip per node
            pipe.set(self.prefix + key, value, px=ms)
            pipe.sadd(listed, key)
            await self.conn.do(pipe.execute())

    async def remove_outputs_of(self, task_id: str) -> int:
        listed = self.conn.layout.task(task_id).caches
        keys = sorted(k.decode() for k in await self.conn.do(self.conn.r.smembers(listed)))
        removed = 0
        for start in range(0, len(keys), REMOVE_BATCH):
            batch = keys[start : start + REMOVE_BATCH]
            calls = [(self._remove_if_owned, [self.prefix + key], [task_id]) for key in batch]
            removed += sum(int(n) for n in await self.conn.scripts(calls))
        if keys:  # every replica drops its copies now, not when they would expire
            try:
                await self.conn.do(self.conn.r.publish(self.conn.layout.cache_channel, task_id))
            except Unavailable as exc:
                if not isinstance(exc.__cause__, NoPermissionError):  # an ACL without pub/sub: they expire
                    raise
        return removed

    def removed_tasks(self) -> AsyncIterator[str]:
        """The ids of tasks whose cached outputs were removed through any replica, as they come."""
        return follow_channel(self.conn, self.conn.layout.cache_channel, "copies of removed outputs expire instead")
