"""The capacity ledger of the embedded store, in memory (one process owns every call, so memory
is the shared place; see CapacityLedger in engine/ports). It applies the same rule as the Redis
script: see protocols/capacity.grant_in_order."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from mcp_server.engine.ports import CapacityRequest, CapacitySlice
from mcp_server.protocols.capacity import Resources, Waiter, grant_in_order


@dataclass
class _Grant:
    address: str
    needs: Resources  # of one unit
    units: int
    until: float


@dataclass
class _Waiting:
    rank: tuple[int, str]
    waiter: Waiter
    expires: float


class SqliteCapacity:
    """CapacityLedger in this process's memory."""

    def __init__(self) -> None:
        self.capacities: dict[str, Resources] = {}
        self.in_use: dict[str, Resources] = {}
        self.grants: dict[str, _Grant] = {}
        self.waiting: dict[str, _Waiting] = {}

    async def acquire_capacity(self, request: CapacityRequest) -> str | None:
        granted = await self.acquire_capacity_slice(request)
        return granted.address if granted else None

    async def acquire_capacity_slice(self, request: CapacityRequest) -> CapacitySlice | None:
        now = time.monotonic()
        self._expire(now)
        if request.waiter_id not in self.grants:
            self._ask(request, now)
        grant = self.grants.get(request.waiter_id)
        return CapacitySlice(grant.address, grant.units, len(self.waiting)) if grant else None

    def _ask(self, request: CapacityRequest, now: float) -> None:
        for address, capacity in request.candidates.items():
            self.capacities[address] = Resources.decode(capacity)
        waiter = Waiter(
            request.waiter_id, Resources.decode(request.needs), tuple(request.candidates), max(1, request.units)
        )
        self.waiting[request.waiter_id] = _Waiting(
            (-request.priority, request.member), waiter, now + request.wait_seconds
        )
        queue = [w.waiter for w in sorted(self.waiting.values(), key=lambda w: w.rank)]
        for waiter_id, (address, units) in grant_in_order(queue, self.capacities, self.in_use).items():
            needs = self.waiting.pop(waiter_id).waiter.needs
            self.in_use[address] = self.in_use.get(address, Resources()).plus(needs.times(units))
            self.grants[waiter_id] = _Grant(address, needs, units, now + request.lease_seconds)

    async def release_capacity(self, waiter_id: str, member: str, units: int = 0) -> int:
        self._release(waiter_id, units)
        return await self.capacity_waiting()

    def _release(self, waiter_id: str, units: int = 0) -> None:
        self.waiting.pop(waiter_id, None)
        grant = self.grants.get(waiter_id)
        if grant is None:
            return
        given = grant.units if units <= 0 else min(units, grant.units)
        self.in_use[grant.address] = self.in_use[grant.address].minus(grant.needs.times(given))
        grant.units -= given
        if not grant.units:
            del self.grants[waiter_id]

    async def renew_capacity(self, waiter_ids: Sequence[str], lease_seconds: float) -> list[str]:
        now = time.monotonic()
        self._expire(now)
        missing = []
        for waiter_id in waiter_ids:
            if waiter_id in self.grants:
                self.grants[waiter_id].until = now + lease_seconds
            else:
                missing.append(waiter_id)
        return missing

    async def capacity_waiting(self) -> int:
        self._expire(time.monotonic())
        return len(self.waiting)

    async def capacity_in_use(self) -> dict[str, str]:
        return {address: used.encode() for address, used in self.in_use.items()}

    def _expire(self, now: float) -> None:
        for waiter_id in [w for w, grant in self.grants.items() if grant.until < now]:
            self._release(waiter_id)
        for waiter_id in [w for w, waiting in self.waiting.items() if waiting.expires < now]:
            del self.waiting[waiter_id]
