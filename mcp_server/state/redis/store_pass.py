"""StorePass: work a replica does once over the store, in the background (a pass over many tasks
must not hold up whoever started it), started again by the next `start` until it has succeeded."""

from __future__ import annotations

import asyncio
import contextlib

from mcp_server.state.redis.connection import RedisConnection


class StorePass:
    """Subclasses do the work in `run`, which answers whether it is done (False: start it again)."""

    name = "store-pass"

    def __init__(self, conn: RedisConnection) -> None:
        self.conn = conn
        self.done = False
        self.running: asyncio.Task[None] | None = None
        conn.on_close(self._stop)

    @property
    def under_way(self) -> bool:
        return self.running is not None and not self.running.done()

    def start(self) -> None:
        """Start the pass unless it is done or under way."""
        if not self.done and not self.under_way:
            self.running = asyncio.get_running_loop().create_task(self._once(), name=self.name)

    async def run(self) -> bool:
        raise NotImplementedError

    async def _once(self) -> None:
        self.done = await self.run()

    async def _stop(self) -> None:
        if self.under_way:
            assert self.running is not None
            self.running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.running
