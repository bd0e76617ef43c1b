"""Admission: a call that needs capacity starts only on an instance that has it left.

The capacity of every instance is accounted in the store (shared by all replicas, held under
leases, see Store.acquire_capacity). A call asks; if no instance can take it now it waits,
asking again after a short pause (sooner when a call on this replica gives capacity back),
until it is granted or its step's timeout ends the wait. While it holds a grant, this replica
renews the grant's lease; if the replica dies, the lease runs out and the capacity comes back.

Kept grants. While no call of any replica waits, a finished call's grant is not given back at
once: this replica keeps it (still counted as in use by the ledger, still leased) for the next
call here with the same needs, which then starts without a round trip to the store. While it
keeps grants, the replica asks the ledger every QUIET_CHECK seconds whether anyone waits; as
soon as someone does (or a call here must wait), it gives every kept grant back, and a kept
grant unused for `keep_seconds` goes back too (0: nothing is kept). The price: a call on another replica that asks
in the moment between its arrival and the next check waits up to QUIET_CHECK longer, so
priority order across replicas holds to within that interval (within one replica it holds
exactly: nothing is kept while a call here waits).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from mcp_server.engine.ports import CallObserver, CapacityLedger, CapacityRequest
from mcp_server.errors import McpError
from mcp_server.protocols.capacity import Resources

log = logging.getLogger(__name__)
FIRST_PAUSE = 0.005
LONGEST_PAUSE = 0.1
WAITER_SECONDS = 3.0  # a waiter that stops asking (its replica died) is forgotten after this
QUIET_CHECK = 0.02  # while grants are kept: how often to ask whether any call waits


@dataclass(frozen=True)
class Grant:
    """Capacity (`needs`) held on `address` by one call."""

    address: str
    waiter_id: str
    member: str
    needs: Resources


class Admission:
    def __init__(self, store: CapacityLedger, lease_seconds: float, keep_seconds: float = 0.25) -> None:
        self.store = store
        self.lease_seconds = lease_seconds
        self.keep_seconds = keep_seconds
        self.held: dict[str, Grant] = {}  # every grant held here, in use or kept: their leases are renewed
        self.kept: dict[Resources, dict[str, list[tuple[Grant, float]]]] = {}  # needs -> address -> (grant, kept at)
        self.kept_count = 0
        self.in_use_here: Counter[str] = Counter()  # address -> calls running here under a grant
        self.waiting: Counter[str] = Counter()  # protocol -> calls of this replica waiting
        self._waiting_here = 0
        self._quiet_until = 0.0  # monotonic time until which the ledger is known to have no waiters
        self._released = asyncio.Event()
        self._giving: set[asyncio.Task[None]] = set()
        self._attendant: asyncio.Task[None] | None = None

    async def acquire(
        self,
        protocol: str,
        needs: Resources,
        candidates: Mapping[str, Resources],
        priority: int,
        observer: CallObserver | None,
    ) -> Grant:
        """Wait for room for `needs` on one of `candidates` (address -> capacity); cancelling
        the wait (a step timeout) withdraws it."""
        grant = self._take_kept(needs, candidates) if self._may_keep() else None
        if grant is None:
            grant = await self._ask_ledger(protocol, needs, candidates, priority, observer)
        self.in_use_here[grant.address] += 1
        return grant

    async def _ask_ledger(
        self,
        protocol: str,
        needs: Resources,
        candidates: Mapping[str, Resources],
        priority: int,
        observer: CallObserver | None,
    ) -> Grant:
        waiter_id = uuid.uuid4().hex
        member = f"{int(time.time() * 1000):015d}:{waiter_id}"
        request = CapacityRequest(
            waiter_id,
            member,
            priority,
            needs.encode(),
            {a: c.encode() for a, c in candidates.items()},
            self.lease_seconds,
            WAITER_SECONDS,
        )
        pause, announced = FIRST_PAUSE, False
        try:
            while (address := await self.store.acquire_capacity(request)) is None:
                if not announced:
                    announced = True
                    self.waiting[protocol] += 1
                    self._waiting_here += 1
                    self._quiet_until = 0.0
                    self._give_back_kept()  # they may be what this call needs
                    if observer is not None:
                        observer.waiting(
                            protocol, needs.describe(), f"no instance of {protocol} has {needs.describe()} free"
                        )
                self._released.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(pause):  # not wait_for: see engine/cancelling.py
                        await self._released.wait()
                pause = min(pause * 2, LONGEST_PAUSE)
        except BaseException:
            await asyncio.shield(self._withdraw(waiter_id, member))
            raise
        finally:
            if announced:
                self.waiting[protocol] -= 1
                self._waiting_here -= 1
        grant = self.held[waiter_id] = Grant(address, waiter_id, member, needs)
        if announced and observer is not None:
            observer.granted(protocol, address)
        return grant

    def release(self, grant: Grant) -> None:
        """The call is done with `grant`: keep it for the next call here (see the module's
        docstring) or give it back, in the background: the call's result does not wait for the
        write (if the store cannot be reached, the lease gives it back)."""
        self.in_use_here[grant.address] -= 1
        if self._may_keep() and grant.waiter_id in self.held:
            self.kept.setdefault(grant.needs, {}).setdefault(grant.address, []).append((grant, time.monotonic()))
            self.kept_count += 1
            if self._attendant is None:
                self._attendant = asyncio.get_running_loop().create_task(self._attend())
            return
        self._give_back_now(grant)

    async def close(self) -> None:
        """Give back every kept grant (at shutdown) and wait for the give-backs under way."""
        if self._attendant is not None:
            self._attendant.cancel()
        self._give_back_kept()
        await asyncio.gather(*self._giving, return_exceptions=True)

    def _may_keep(self) -> bool:
        return self.keep_seconds > 0 and not self._waiting_here and time.monotonic() < self._quiet_until

    def _take_kept(self, needs: Resources, candidates: Mapping[str, Resources]) -> Grant | None:
        by_address = self.kept.get(needs)
        if not by_address:
            return None
        usable = [a for a, grants in by_address.items() if grants and a in candidates]
        if not usable:
            return None
        address = min(usable, key=lambda a: self.in_use_here[a])  # spread over instances as the ledger would
        grant, _ = by_address[address].pop()
        self.kept_count -= 1
        return grant

    def _give_back_kept(self, kept_before: float = math.inf) -> None:
        """Give back the grants kept since before `kept_before` (monotonic; default: all)."""
        if not self.kept_count:
            return
        for by_address in self.kept.values():
            for address, grants in by_address.items():
                staying = [(g, at) for g, at in grants if at >= kept_before]
                for grant, at in grants:
                    if at < kept_before:
                        self._give_back_now(grant)
                self.kept_count -= len(grants) - len(staying)
                by_address[address] = staying

    async def _attend(self) -> None:
        """While grants are kept: ask the ledger whether anyone waits; give everything back if
        so, and give back what stayed unused too long."""
        try:
            while self.kept_count:
                await asyncio.sleep(QUIET_CHECK)
                try:
                    waiting = await self.store.capacity_waiting()
                except McpError as exc:
                    log.warning("could not ask the capacity ledger: %s", exc)
                    waiting = -1
                self._note_waiting(waiting)
                self._give_back_kept(time.monotonic() - self.keep_seconds if waiting == 0 else math.inf)
        finally:
            self._attendant = None

    def _note_waiting(self, waiting: int) -> None:
        self._quiet_until = time.monotonic() + 2 * QUIET_CHECK if waiting == 0 else 0.0

    def _give_back_now(self, grant: Grant) -> None:
        self.held.pop(grant.waiter_id, None)
        giving = asyncio.get_running_loop().create_task(self._give_back(grant))
        self._giving.add(giving)
        giving.add_done_callback(self._giving.discard)

    async def _give_back(self, grant: Grant) -> None:
        waiting = await self._withdraw(grant.waiter_id, grant.member)
        if waiting is not None:
            self._note_waiting(waiting)
            if waiting:
                self._give_back_kept()
        self._released.set()

    async def _withdraw(self, waiter_id: str, member: str) -> int | None:
        try:
            return await self.store.release_capacity(waiter_id, member)
        except McpError as exc:
            log.warning("could not give capacity back now (its lease will): %s", exc)
            return None

    async def keep_leases(self) -> None:
        """Renew the leases of every grant this replica holds, kept ones too (run as a
        background task)."""
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            if self.held:
                try:
                    await self.store.renew_capacity(list(self.held), self.lease_seconds)
                except McpError as exc:
                    log.warning("capacity lease upkeep paused: %s", exc)
