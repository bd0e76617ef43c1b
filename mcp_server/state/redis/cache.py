"""The step cache on Redis: one string per key, `P{sc}:<key>` would put every entry in one slot,
so entries are `Psc:<key>` (spread over the cluster), each with its own expiry."""

from __future__ import annotations

import time

from mcp_server.engine.ports.cache import CachedOutput
from mcp_server.state.redis.connection import RedisConnection


class RedisStepCache:
    """StepCache on Redis: SET with PX, GET."""

    def __init__(self, conn: RedisConnection) -> None:
        self.conn = conn
        self.prefix = f"{conn.layout.prefix}sc:"

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
        await self.conn.do(self.conn.r.set(self.prefix + key, value, px=max(1, int(ttl * 1000))))
