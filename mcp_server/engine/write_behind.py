"""WriteBehind: when a run's changes are written (RunContext.checkpoint says what is written).

Writes are behind, not in the way: a node's completion starts a write in the background that
runs while the next plugin call is under way, and whatever happens meanwhile (the next step's
start) rides along in the same write, so a sequence costs one store round trip per step. A start
is written a moment later, or with the next write if that comes sooner. The next node waits for
the write under way only when it must: the store refused it (away or full: the run pauses there
until it lands), or it has not come back for WRITE_STALL_SECONDS (a store that answers nothing:
the run does not go on ahead of what is stored, since the replica that takes it over would call
all those steps again). A lost lease is raised where the run next starts a node.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from mcp_server.errors import CancelRequested, LeaseLost

WRITE_STALL_SECONDS = 1.0  # a write not back after this long holds up the run's next node


class WriteBehind:
    def __init__(self, write: Callable[[], Awaitable[None]], pending: Callable[[], bool]) -> None:
        self._write = write  # writes what is pending, atomically
        self._pending = pending  # whether anything is
        self._background: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._writing_since: float | None = None  # when the write under way began (loop time)
        self.lease_lost: LeaseLost | None = None
        self.store_down = False  # a write was refused: the next node waits until one lands

    def soon(self) -> None:
        """Start writing in the background, unless a write is under way already (it picks up what
        is pending when it is done)."""
        self.cancel_delayed()
        if self._background is None or self._background.done():
            self._background = asyncio.get_running_loop().create_task(self._in_background())

    def within(self, delay: float) -> None:
        """Have what is pending written within `delay` seconds: by the next write, if one comes
        sooner, else on its own."""
        if delay <= 0:
            self.soon()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(delay, self._due)

    def _due(self) -> None:
        self._timer = None
        if self._pending():
            self.soon()

    def cancel_delayed(self, abandoned: bool = False) -> None:
        """Drop a write waiting for its delay; `abandoned`: the run stops here, and a write under
        way in the background stops too (its next owner goes on from the last write that landed)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if abandoned and self._background is not None:
            self._background.cancel()

    async def _in_background(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending():
                self._writing_since = loop.time()
                await self._write()
        except LeaseLost as exc:
            self.lease_lost = exc
        except CancelRequested:
            pass  # its completion, refused: the run's last write ends it CANCELLED (TaskRunner)
        finally:
            self._writing_since = None

    async def ready(self) -> None:
        """Raise LeaseLost if another replica took the task; wait for the write under way while the
        store refuses it, or while it has not come back for WRITE_STALL_SECONDS."""
        if self.lease_lost is not None:
            raise self.lease_lost
        since = self._writing_since
        stalled = since is not None and asyncio.get_running_loop().time() - since > WRITE_STALL_SECONDS
        if self._background is not None and (self.store_down or stalled):
            await asyncio.shield(self._background)
            if self.lease_lost is not None:
                raise self.lease_lost
