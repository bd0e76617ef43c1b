"""Admission on a real store: a replica keeps a finished call's grant for its next call while
no call anywhere waits, and gives kept grants back as soon as one does, when they stay unused,
and at shutdown. Two Admissions on one store stand for two replicas."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from mcp_server.engine.ports import CapacityRequest
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

    async def acquire_capacity(self, request: CapacityRequest) -> str | None:
        self.asked += 1
        return await self.store.acquire_capacity(request)

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


async def test_a_finished_call_s_grant_serves_the_next_call_here_without_a_round_trip(store):
    counting = CountingStore(store)
    admission = Admission(counting, lease_seconds=5.0)  # type: ignore[arg-type]
    gpus = {"a:1": Resources(gpus=2)}
    first = await one_call(admission, gpus)
    admission.release(first)  # nothing known about waiters yet: given back, and the answer says none wait
    await settle()
    second = await one_call(admission, gpus)
    admission.release(second)
    assert admission.kept_count == 1 and counting.asked == 2
    reused = await one_call(admission, gpus)
    assert counting.asked == 2 and reused == second  # the same grant, no ledger round trip
    assert (await store.capacity_in_use())["a:1"] == "0,0,1"  # still counted by the ledger while used or kept
    admission.release(reused)
    deadline = asyncio.get_running_loop().time() + admission.keep_seconds + 10 * QUIET_CHECK
    while admission.kept_count and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(QUIET_CHECK)
    await settle()
    assert admission.kept_count == 0 and (await store.capacity_in_use())["a:1"] == "0,0,0"  # unused: given back
    await admission.close()


async def test_kept_grants_go_back_as_soon_as_a_call_of_another_replica_waits(store):
    here, there = Admission(store, lease_seconds=5.0), Admission(store, lease_seconds=5.0)
    gpu = {"a:1": Resources(gpus=1)}
    for _ in range(2):
        here.release(await one_call(here, gpu))
        await settle()
    assert here.kept_count == 1  # the only GPU, kept here
    granted = await asyncio.wait_for(one_call(there, gpu, priority=9), timeout=5)  # a bound, not a timing
    assert granted.address == "a:1" and here.kept_count == 0
    assert (await store.capacity_in_use())["a:1"] == "0,0,1"
    # while the other replica's call waits for it, a new call here does not take a kept grant
    waiting = asyncio.create_task(one_call(here, gpu))
    await asyncio.sleep(3 * QUIET_CHECK)
    assert not waiting.done() and here.waiting["render"] == 1
    there.release(granted)
    assert (await asyncio.wait_for(waiting, timeout=5)).address == "a:1"
    for admission in (here, there):
        await admission.close()


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
    assert granted.waiter_id != holding.waiter_id and admission.kept_count == 0
    admission.release(granted)
    await admission.close()


async def test_with_keeping_off_every_call_asks_the_ledger(store):
    counting = CountingStore(store)
    admission = Admission(counting, lease_seconds=5.0, keep_seconds=0)  # type: ignore[arg-type]
    for _ in range(3):
        admission.release(await one_call(admission, {"a:1": Resources(gpus=2)}))
        await settle()
    assert counting.asked == 3 and admission.kept_count == 0
    await admission.close()


async def test_kept_grants_are_given_back_at_shutdown(store):
    admission = Admission(store, lease_seconds=5.0)
    gpu = {"a:1": Resources(gpus=4)}
    grants = [await one_call(admission, gpu) for _ in range(2)]
    admission.release(grants[0])
    await settle()
    admission.release(grants[1])
    assert admission.kept_count == 1
    await admission.close()
    assert (await store.capacity_in_use())["a:1"] == "0,0,0"
