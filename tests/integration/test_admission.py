"""Admission on a real store: while no call anywhere waits, a replica asks for slices (several
units in one round trip) and keeps a finished call's unit for its next call; it gives free units
back as soon as a call anywhere waits, when they stay unused, and at shutdown. Two Admissions on
one store stand for two replicas."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from mcp_server.engine.ports import CapacityRequest, CapacitySlice
from mcp_server.protocols.admission import QUIET_CHECK, Admission, Grant
from mcp_server.protocols.capacity import Resources
from mcp_server.state import open_store

pytestmark = pytest.mark.asyncio
ONE_GPU = Resources(gpus=1)


class CountingStore:
    """A real store, with the ledger round trips of one replica counted."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.asked = 0
        self.units_asked: list[int] = []

    async def acquire_capacity_slice(self, request: CapacityRequest) -> CapacitySlice | None:
        self.asked += 1
        self.units_asked.append(request.units)
        return await self.store.acquire_capacity_slice(request)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


@pytest.fixture(params=["sqlite", "redis"])
async def store(request):
    url = "sqlite://:memory:" if request.param == "sqlite" else request.getfixturevalue("redis_url")
    opened = await open_store(url)
    yield opened.capacity
    await opened.close()


async def settle() -> None:
    """Let the background give-backs reach the store."""
    await asyncio.sleep(QUIET_CHECK / 4)


async def one_call(admission: Admission, capacity: dict[str, Resources], priority: int = 0) -> Grant:
    return await admission.acquire("render", ONE_GPU, capacity, priority, None)


async def wait_until_given_back(admission: Admission) -> None:
    deadline = asyncio.get_running_loop().time() + admission.keep_seconds + 20 * QUIET_CHECK
    while admission.kept_count and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(QUIET_CHECK)
    await settle()


async def test_a_slice_serves_the_next_calls_here_without_a_round_trip(store):
    counting = CountingStore(store)
    admission = Admission(counting, lease_seconds=5.0, slice_units=4)  # type: ignore[arg-type]
    gpus = {"a:1": Resources(gpus=10)}
    first = await one_call(admission, gpus)  # nothing known about waiters yet: one unit
    assert counting.units_asked == [1]
    admission.release(first)  # the answer said nobody waits: kept for the next call here
    assert admission.kept_count == 1
    burst = await asyncio.gather(*(one_call(admission, gpus) for _ in range(5)))
    # one took the kept unit, one asked for a slice of 4, the three others waited for that slice
    assert counting.units_asked == [1, 4] and {g.address for g in burst} == {"a:1"}
    assert (await store.capacity_in_use())["a:1"] == "0,0,5"  # the ledger counts every unit held here
    for grant in burst:
        admission.release(grant)
    assert admission.kept_count == 5 and counting.asked == 2
    again = await one_call(admission, gpus)
    assert counting.asked == 2  # served from what this replica holds
    admission.release(again)
    await wait_until_given_back(admission)  # unused for keep_seconds: every unit goes back
    assert admission.kept_count == 0 and (await store.capacity_in_use())["a:1"] == "0,0,0"
    await admission.close()


async def test_a_slice_never_holds_more_than_fits_and_the_calls_it_cannot_serve_wait_in_order(store):
    admission = Admission(store, lease_seconds=5.0, slice_units=8)
    three = {"a:1": Resources(gpus=3)}
    admission.release(await one_call(admission, three))  # now the replica knows nobody waits
    calls = [asyncio.create_task(one_call(admission, three)) for _ in range(6)]
    await asyncio.sleep(3 * QUIET_CHECK)
    running = [c.result() for c in calls if c.done()]
    assert len(running) == 3 and (await store.capacity_in_use())["a:1"] == "0,0,3"  # never more than 3
    assert admission.waiting["render"] == 3
    for grant in running:
        admission.release(grant)  # a call waits here: each unit goes back to the ledger, which grants the next
    rest = await asyncio.wait_for(asyncio.gather(*calls[3:]), timeout=5)  # a bound, not a timing
    assert all(g.address == "a:1" for g in rest) and (await store.capacity_in_use())["a:1"] == "0,0,3"
    for grant in rest:
        admission.release(grant)
    await admission.close()
    assert (await store.capacity_in_use())["a:1"] == "0,0,0"


async def test_free_units_go_back_as_soon_as_a_call_of_another_replica_waits(store):
    here, there = Admission(store, lease_seconds=5.0), Admission(store, lease_seconds=5.0)
    gpu = {"a:1": Resources(gpus=1)}
    for _ in range(2):
        here.release(await one_call(here, gpu))
        await settle()
    assert here.kept_count == 1  # the only GPU, kept here
    granted = await asyncio.wait_for(one_call(there, gpu, priority=9), timeout=5)  # a bound, not a timing
    assert granted.address == "a:1" and here.kept_count == 0
    assert (await store.capacity_in_use())["a:1"] == "0,0,1"
    # while the other replica's call waits for it, a new call here does not take a kept unit
    waiting = asyncio.create_task(one_call(here, gpu))
    await asyncio.sleep(3 * QUIET_CHECK)
    assert not waiting.done() and here.waiting["render"] == 1
    there.release(granted)
    assert (await asyncio.wait_for(waiting, timeout=5)).address == "a:1"
    for admission in (here, there):
        await admission.close()


async def test_a_slice_in_use_gives_back_only_its_free_units_when_another_replica_waits(store):
    here, there = Admission(store, lease_seconds=5.0, slice_units=4), Admission(store, lease_seconds=5.0)
    four = {"a:1": Resources(gpus=4)}
    here.release(await one_call(here, four))  # one unit, kept: nobody waits
    kept = await one_call(here, four)
    sliced = await one_call(here, four)  # nothing free here: a slice, of the 3 units left
    assert (kept.slice.units, sliced.slice.units, sliced.slice.in_use) == (1, 3, 1)
    here.release(kept)
    assert here.kept_count == 3 and (await store.capacity_in_use())["a:1"] == "0,0,4"
    big = await asyncio.wait_for(there.acquire("render", Resources(gpus=3), four, 0, None), timeout=5)
    assert big.address == "a:1" and here.kept_count == 0  # the free units went back, the used one stays
    assert (await store.capacity_in_use())["a:1"] == "0,0,4" and sliced.slice.units == 1
    here.release(sliced)
    there.release(big)
    for admission in (here, there):
        await admission.close()
    await settle()
    assert (await store.capacity_in_use())["a:1"] == "0,0,0"


async def test_nothing_is_kept_while_a_call_here_waits(store):
    admission = Admission(store, lease_seconds=5.0)
    gpu = {"a:1": Resources(gpus=1)}
    warm = await one_call(admission, gpu)
    admission.release(warm)
    await settle()
    holding = await one_call(admission, gpu)
    behind = asyncio.create_task(one_call(admission, gpu))
    await asyncio.sleep(3 * QUIET_CHECK)
    assert not behind.done()
    admission.release(holding)  # given to the ledger, which grants the waiter, not kept
    granted = await asyncio.wait_for(behind, timeout=5)
    assert granted.slice is not holding.slice and admission.kept_count == 0
    admission.release(granted)
    await admission.close()


async def test_with_keeping_off_every_call_asks_the_ledger_for_one_unit(store):
    counting = CountingStore(store)
    admission = Admission(counting, lease_seconds=5.0, keep_seconds=0)  # type: ignore[arg-type]
    for _ in range(3):
        admission.release(await one_call(admission, {"a:1": Resources(gpus=2)}))
        await settle()
    assert counting.units_asked == [1, 1, 1] and admission.kept_count == 0
    await admission.close()


async def test_free_units_are_given_back_at_shutdown(store):
    admission = Admission(store, lease_seconds=5.0)
    gpu = {"a:1": Resources(gpus=4)}
    grants = [await one_call(admission, gpu) for _ in range(2)]
    admission.release(grants[0])
    await settle()
    admission.release(grants[1])
    assert admission.kept_count >= 1
    await admission.close()
    assert (await store.capacity_in_use())["a:1"] == "0,0,0"


async def test_a_call_that_must_wait_asks_on_for_one_unit_not_a_slice(store):
    here, there = Admission(store, lease_seconds=5.0), Admission(store, lease_seconds=5.0)
    two, other = {"a:1": Resources(gpus=2)}, {"b:1": Resources(gpus=1)}
    there.release(await one_call(there, two))
    taken = [await one_call(there, two) for _ in range(2)]  # there holds both GPUs of a:1
    here.release(await one_call(here, other))  # here learns nobody waits: its next ask is for a slice
    waiting = asyncio.create_task(one_call(here, two))
    await asyncio.sleep(3 * QUIET_CHECK)
    assert not waiting.done() and here.waiting["render"] == 1
    for grant in taken:
        there.release(grant)
    granted = await asyncio.wait_for(waiting, timeout=5)  # a bound, not a timing
    assert granted.slice.units == 1  # once it had to wait, it asked for one unit, as everyone waiting does
    here.release(granted)
    for admission in (here, there):
        await admission.close()


async def test_a_slice_the_ledger_lost_serves_no_more_calls(store):
    admission = Admission(store, lease_seconds=5.0)
    four = {"a:1": Resources(gpus=4)}
    admission.release(await one_call(admission, four))
    first = await one_call(admission, four)  # takes the kept unit
    second = await one_call(admission, four)  # a slice of the 3 units left: 2 of them free
    lost = second.slice
    assert (lost.units, lost.free) == (3, 2)
    await store.release_capacity(lost.waiter_id, lost.member)  # as when its lease ran out during an outage
    await admission.renew()
    assert lost.waiter_id not in admission.slices and admission.kept_count == 0
    third = await one_call(admission, four)  # from the ledger, not from the lost slice's free units
    assert third.slice is not lost
    for grant in (first, second, third):
        admission.release(grant)  # the lost slice's unit: nothing to give back, the ledger does not hold it
    await admission.close()
    await settle()
    assert (await store.capacity_in_use())["a:1"] == "0,0,0"
