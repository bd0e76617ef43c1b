"""Admission: a call that needs capacity starts only on an instance that has it left.

The capacity of every instance is accounted in the store (shared by all replicas, held under
leases, see Store.acquire_capacity). A call asks; if no instance can take it now it waits,
asking again after a short pause (sooner when a call on this replica gives capacity back),
until it is granted or its step's timeout ends the wait. While it holds a grant, this replica
renews the grant's lease; if the replica dies, the lease runs out and the capacity comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from mcp_server.engine.ports import CallObserver, CapacityRequest, Store
from mcp_server.errors import McpError
from mcp_server.protocols.capacity import Resources

log = logging.getLogger(__name__)
FIRST_PAUSE = 0.005
LONGEST_PAUSE = 0.1
WAITER_SECONDS = 3.0  # a waiter that stops asking (its replica died) is forgotten after this


@dataclass(frozen=True)
class Grant:
    """Capacity held on `address` by one call."""

    address: str
    waiter_id: str
    member: str


class Admission:
    def __init__(self, store: Store, lease_seconds: float) -> None:
        self.store = store
        self.lease_seconds = lease_seconds
        self.held: dict[str, Grant] = {}
        self.waiting: Counter[str] = Counter()  # protocol -> calls of this replica waiting
        self._released = asyncio.Event()
        self._giving: set[asyncio.Task[None]] = set()

    async def acquire(self, protocol: str, needs: Resources, candidates: Mapping[str, Resources], priority: int,
                      observer: CallObserver | None) -> Grant:
        """Wait for room for `needs` on one of `candidates` (address -> capacity); cancelling
        the wait (a step timeout) withdraws it."""
        waiter_id = uuid.uuid4().hex
        member = f"{int(time.time() * 1000):015d}:{waiter_id}"
        request = CapacityRequest(waiter_id, member, priority, needs.encode(), {a: c.encode() for a, c in candidates.items()},
                                  self.lease_seconds, WAITER_SECONDS)
        pause, announced = FIRST_PAUSE, False
        try:
            while (address := await self.store.acquire_capacity(request)) is None:
                if not announced:
                    announced = True
                    self.waiting[protocol] += 1
                    if observer is not None:
                        observer.waiting(protocol, needs.describe(), f"no instance of {protocol} has {needs.describe()} free")
                self._released.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._released.wait(), pause)
                pause = min(pause * 2, LONGEST_PAUSE)
        except BaseException:
            await asyncio.shield(self._withdraw(waiter_id, member))
            raise
        finally:
            if announced:
                self.waiting[protocol] -= 1
        grant = self.held[waiter_id] = Grant(address, waiter_id, member)
        if announced and observer is not None:
            observer.granted(protocol, address)
        return grant

    def release(self, grant: Grant) -> None:
        """Give the capacity back, in the background: the call's result does not wait for the
        write (if the store cannot be reached, the lease gives it back)."""
        self.held.pop(grant.waiter_id, None)
        giving = asyncio.get_running_loop().create_task(self._give_back(grant))
        self._giving.add(giving)
        giving.add_done_callback(self._giving.discard)

    async def _give_back(self, grant: Grant) -> None:
        await self._withdraw(grant.waiter_id, grant.member)
        self._released.set()

    async def _withdraw(self, waiter_id: str, member: str) -> None:
        try:
            await self.store.release_capacity(waiter_id, member)
        except McpError as exc:
            log.warning("could not give capacity back now (its lease will): %s", exc)

    async def keep_leases(self) -> None:
        """Renew the leases of every grant this replica holds (run as a background task)."""
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            if self.held:
                try:
                    await self.store.renew_capacity(list(self.held), self.lease_seconds)
                except McpError as exc:
                    log.warning("capacity lease upkeep paused: %s", exc)
