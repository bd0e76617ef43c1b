"""Admission: a call that needs capacity starts only on an instance that has it left.

The capacity of every instance is accounted in the store (shared by all replicas, held under
leases, see Store.acquire_capacity). A call asks; if no instance can take it now it waits,
asking again after a short pause (sooner when a call on this replica gives capacity back),
until it is granted or its step's timeout ends the wait. While it holds a grant, this replica
renews the grant's lease; if the replica dies, the lease runs out and the capacity comes back.

Slices. While no call of any replica waits for capacity, this replica asks the ledger for a
slice: up to `slice_units` units of a call's needs on one instance (as many as fit there), in
one round trip and under one lease. Its calls with the same needs take units from the slice
without a round trip; calls that arrive while a slice is being asked for wait for that answer
instead of asking too. A unit a call gives back stays in the slice for the next call here.
While it holds slices, the replica asks the ledger every QUIET_CHECK seconds whether anyone
waits; as soon as someone does (or a call here must wait), every slice gives back its
free units (one round trip each; units in use stay until their calls end), and a slice no call
took a unit from for `keep_seconds` gives back its free units too (0: no slices, no kept
units: every call asks the ledger for one unit). While anyone waits, calls here ask for one
unit each, in the ledger's order.

What that relaxes: a call on another replica that arrives between two checks waits up to
QUIET_CHECK longer, while free units sit in this replica's slices, so priority order across
replicas holds to within that interval (within one replica it holds exactly: nothing is taken
from a slice while a call here waits). A slice's free units count as in use in the ledger and
its gauges. Capacity is never exceeded: a slice's units are granted units, and a slice the
ledger no longer holds (its lease ran out while the store could not be reached) serves no more
calls once a renewal says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from mcp_server.engine.failure_notes import FailureNotes
from mcp_server.engine.ports import CallObserver, CapacityLedger, CapacityRequest, CapacitySlice
from mcp_server.errors import McpError, Unavailable
from mcp_server.protocols.capacity import Resources

log = logging.getLogger(__name__)
FIRST_PAUSE = 0.005
LONGEST_PAUSE = 0.1
STORE_RETRY_PAUSE = 2.0  # the longest wait between asks of a store that refuses them
WAITER_SECONDS = 3.0  # a waiter that stops asking (its replica died) is forgotten after this
QUIET_CHECK = 0.02  # while slices are held: how often to ask whether any call waits


@dataclass(eq=False)
class Slice:
    """`units` of `needs` on `address`, held by this replica as one ledger grant."""

    address: str
    waiter_id: str
    member: str
    needs: Resources
    units: int
    in_use: int = 0
    taken_at: float = field(default_factory=time.monotonic)  # when a call last took a unit

    @property
    def free(self) -> int:
        return self.units - self.in_use


@dataclass(frozen=True, eq=False)
class Grant:
    """One unit of a slice, held by one call (on `address`)."""

    address: str
    slice: Slice


class Admission:
    def __init__(
        self, store: CapacityLedger, lease_seconds: float, keep_seconds: float = 0.25, slice_units: int = 8
    ) -> None:
        self.store = store
        self.lease_seconds = lease_seconds
        self.keep_seconds = keep_seconds
        self.slice_units = max(1, slice_units)
        self.slices: dict[str, Slice] = {}  # every slice held here, by ledger id: their leases are renewed
        self.in_use_here: Counter[str] = Counter()  # address -> calls running here under a grant
        self.waiting: Counter[str] = Counter()  # protocol -> calls of this replica waiting
        self._waiting_here = 0
        self._quiet_until = 0.0  # monotonic time until which the ledger is known to have no waiters
        self._released = asyncio.Event()
        self._asking: dict[Resources, asyncio.Event] = {}  # needs -> a slice being asked for
        self._giving: set[asyncio.Task[None]] = set()
        self._attendant: asyncio.Task[None] | None = None
        self._ledger_failures = FailureNotes(log, "asking the capacity ledger who waits")
        self._renew_failures = FailureNotes(log, "capacity lease upkeep")

    @property
    def kept_count(self) -> int:
        """Free units in this replica's slices (granted, kept for the next calls here)."""
        return sum(s.free for s in self.slices.values())

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
        while self._may_keep():
            taken = self._take_free(needs, candidates)
            if taken is not None:
                return self._grant(taken)
            asking = self._asking.get(needs)
            if asking is None:
                break
            await asking.wait()  # a slice for these needs is on its way: take from it
        taken = await self._ask_ledger(protocol, needs, candidates, priority, observer)
        return self._grant(taken)

    def _grant(self, taken: Slice) -> Grant:
        taken.in_use += 1
        taken.taken_at = time.monotonic()
        self.in_use_here[taken.address] += 1
        return Grant(taken.address, taken)

    async def _ask_ledger(
        self,
        protocol: str,
        needs: Resources,
        candidates: Mapping[str, Resources],
        priority: int,
        observer: CallObserver | None,
    ) -> Slice:
        waiter_id = uuid.uuid4().hex
        member = f"{int(time.time() * 1000):015d}:{waiter_id}"
        units = self.slice_units if self._may_keep() else 1
        request = CapacityRequest(
            waiter_id,
            member,
            priority,
            needs.encode(),
            {a: c.encode() for a, c in candidates.items()},
            self.lease_seconds,
            WAITER_SECONDS,
            units,
        )
        asking = None
        if units > 1:  # the calls with these needs that come meanwhile wait for this slice
            asking = self._asking[needs] = asyncio.Event()
        pause, announced = FIRST_PAUSE, False
        try:
            while (granted := await self._ledger_answer(request)) is None:
                if asking is not None:  # no slice now: ask on for one unit, in the ledger's order
                    self._answered(needs, asking)
                    asking = None
                    request = dataclasses.replace(request, units=1)
                if not announced:
                    announced = True
                    self.waiting[protocol] += 1
                    self._waiting_here += 1
                    self._quiet_until = 0.0
                    self._give_back_free()  # they may be what this call needs
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
            if asking is not None:
                self._answered(needs, asking)
            if announced:
                self.waiting[protocol] -= 1
                self._waiting_here -= 1
        self._note_waiting(granted.waiting)
        taken = self.slices[waiter_id] = Slice(granted.address, waiter_id, member, needs, granted.units)
        if announced and observer is not None:
            observer.granted(protocol, granted.address)
        self._attend_soon()
        return taken

    async def _ledger_answer(self, request: CapacityRequest) -> CapacitySlice | None:
        """The ledger's answer, asked again while the store refuses it (down, or full): an
        outage makes a call wait for its capacity, as it makes a checkpoint wait, and never
        fails its step."""
        pause = FIRST_PAUSE
        while True:
            try:
                return await self.store.acquire_capacity_slice(request)
            except Unavailable as exc:
                log.debug("the capacity ledger cannot answer now: %s", exc)
                await asyncio.sleep(pause)
                pause = min(pause * 2, STORE_RETRY_PAUSE)

    def _answered(self, needs: Resources, asking: asyncio.Event) -> None:
        if self._asking.get(needs) is asking:
            del self._asking[needs]
        asking.set()

    def release(self, grant: Grant) -> None:
        """The call is done with `grant`: its unit stays in the slice for the next call here
        (see the module's docstring) or goes back, in the background: the call's result does
        not wait for the write (if the store cannot be reached, the lease gives it back)."""
        held = grant.slice
        held.in_use -= 1
        self.in_use_here[grant.address] -= 1
        if self._may_keep() and held.waiter_id in self.slices:
            self._attend_soon()
            return
        self._give_back(held)

    async def close(self) -> None:
        """Give back every free unit (at shutdown) and wait for the give-backs under way."""
        if self._attendant is not None:
            self._attendant.cancel()
        self._give_back_free()
        await asyncio.gather(*self._giving, return_exceptions=True)

    def _may_keep(self) -> bool:
        return self.keep_seconds > 0 and not self._waiting_here and time.monotonic() < self._quiet_until

    def _take_free(self, needs: Resources, candidates: Mapping[str, Resources]) -> Slice | None:
        """The slice with a free unit of `needs` on the candidate least used from here."""
        best: Slice | None = None
        for held in self.slices.values():
            fits = held.free > 0 and held.needs == needs and held.address in candidates
            if fits and (best is None or self.in_use_here[held.address] < self.in_use_here[best.address]):
                best = held
        return best

    def _give_back_free(self, taken_before: float | None = None) -> None:
        """Give back the free units of every slice (only of those no call took a unit from
        since `taken_before`, monotonic, when given)."""
        for held in list(self.slices.values()):
            if held.free > 0 and (taken_before is None or held.taken_at < taken_before):
                self._give_back(held)

    def _give_back(self, held: Slice) -> None:
        """Give back the free units of `held` (all of it when no call uses it)."""
        if held.free <= 0 or held.waiter_id not in self.slices:
            return
        units = held.free
        if held.in_use == 0:
            del self.slices[held.waiter_id]
            units = 0  # the whole grant
        else:
            held.units = held.in_use
        giving = asyncio.get_running_loop().create_task(self._give_back_in_store(held, units))
        self._giving.add(giving)
        giving.add_done_callback(self._giving.discard)

    async def _give_back_in_store(self, held: Slice, units: int) -> None:
        waiting = await self._withdraw(held.waiter_id, held.member, units)
        if waiting is not None:
            self._note_waiting(waiting)
            if waiting:
                self._give_back_free()
        self._released.set()

    def _attend_soon(self) -> None:
        if self._attendant is None and self.keep_seconds > 0:
            self._attendant = asyncio.get_running_loop().create_task(self._attend())

    async def _attend(self) -> None:
        """While this replica holds slices: ask the ledger whether anyone waits; give every
        free unit back if so, and those of slices no call took from for `keep_seconds`. (It
        asks while every unit is in use too, so a unit given back then knows whether to stay.)"""
        try:
            while self.slices and self.keep_seconds > 0:
                await asyncio.sleep(QUIET_CHECK)
                try:
                    waiting = await self.store.capacity_waiting()
                    self._ledger_failures.worked()
                except McpError as exc:
                    self._ledger_failures.failed(exc)
                    waiting = -1
                self._note_waiting(waiting)
                self._give_back_free(time.monotonic() - self.keep_seconds if waiting == 0 else None)
        finally:
            self._attendant = None

    def _note_waiting(self, waiting: int) -> None:
        self._quiet_until = time.monotonic() + 2 * QUIET_CHECK if waiting == 0 else 0.0

    async def _withdraw(self, waiter_id: str, member: str, units: int = 0) -> int | None:
        try:
            return await self.store.release_capacity(waiter_id, member, units)
        except McpError as exc:
            log.warning("could not give capacity back now (its lease will): %s", exc)
            return None

    async def keep_leases(self) -> None:
        """Renew the leases of every slice this replica holds (run as a background task)."""
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            await self.renew()

    async def renew(self) -> None:
        """Renew every slice's lease. A slice the ledger no longer holds (its lease ran out while
        the store could not be reached, or the ledger lost it) serves no more calls: its units
        may be someone else's now. Calls running on it finish."""
        if not self.slices:
            return
        try:
            missing = await self.store.renew_capacity(list(self.slices), self.lease_seconds)
            self._renew_failures.worked()
        except McpError as exc:
            self._renew_failures.failed(exc)
            return
        for waiter_id in missing:
            lost = self.slices.pop(waiter_id, None)
            if lost is not None:
                log.warning("capacity slice on %s was lost by the ledger: no more calls on it", lost.address)
