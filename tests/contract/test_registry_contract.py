"""The RegistryStore and CapacityLedger contracts: every backend (SQLite, one Redis node, a Redis
Cluster) behaves the same."""

from __future__ import annotations

import asyncio

import pytest

from mcp_sdk.proto import protocol_pb2, registry_pb2
from mcp_server.engine.ports import CapacityRequest

pytestmark = pytest.mark.asyncio


async def test_registry_entries_round_trip(store):
    entry = registry_pb2.RegisteredProtocol(address="127.0.0.1:9", manifest=protocol_pb2.ProtocolManifest(name="p"))
    await store.registry.put_protocol(entry)
    assert [e.manifest.name for e in await store.registry.list_protocol_entries()] == ["p"]
    assert await store.registry.delete_protocols(address="127.0.0.1:9") == 1
    assert await store.registry.list_protocol_entries() == []


async def test_a_registry_entry_is_removed_only_as_it_was_read(store):
    def entry(name: str, seconds: int) -> registry_pb2.RegisteredProtocol:
        made = registry_pb2.RegisteredProtocol(address="127.0.0.1:9", manifest=protocol_pb2.ProtocolManifest(name=name))
        made.manifest.input_schema.update({"type": "object", "properties": {"b": {}, "a": {}}})  # a map: order varies
        made.expire_time.FromSeconds(seconds)
        return made

    await store.registry.put_protocol(entry("p", 100))
    await store.registry.put_protocol(entry("q", 100))
    read = await store.registry.list_protocol_entries()
    await store.registry.put_protocol(entry("q", 200))  # renewed after it was read
    assert await store.registry.remove_protocol_entries(read) == [0]
    assert [(e.manifest.name, e.expire_time.seconds) for e in await store.registry.list_protocol_entries()] == [
        ("q", 200)
    ]


def ask(
    waiter: str, needs: str, candidates: dict[str, str], priority: int = 0, at: int = 0, lease: float = 30.0
) -> CapacityRequest:
    return CapacityRequest(waiter, f"{at:015d}:{waiter}", priority, needs, candidates, lease, 3.0)


async def test_capacity_is_granted_while_it_lasts_and_given_back(store):
    gpu = {"a:1": "0,0,1", "b:1": "0,0,1"}
    first = await store.capacity.acquire_capacity(ask("w1", "0,0,1", gpu, at=1))
    second = await store.capacity.acquire_capacity(ask("w2", "0,0,1", gpu, at=2))
    assert {first, second} == {"a:1", "b:1"}  # the least loaded first: one each
    assert await store.capacity.acquire_capacity(ask("w3", "0,0,1", gpu, at=3)) is None
    assert (await store.capacity.capacity_in_use())[first] == "0,0,1"
    await store.capacity.release_capacity("w1", f"{1:015d}:w1")
    assert await store.capacity.acquire_capacity(ask("w3", "0,0,1", gpu, at=3)) == first
    assert await store.capacity.acquire_capacity(ask("w1", "0,0,1", gpu, at=1)) is None  # a given-back grant is gone


async def test_waiters_are_granted_by_priority_then_first_come(store):
    one = {"a:1": "0,0,1"}
    assert await store.capacity.acquire_capacity(ask("holder", "0,0,1", one, at=1)) == "a:1"
    for waiter, priority, at in (("low-early", 0, 2), ("high-late", 5, 3), ("low-late", 0, 4)):
        assert await store.capacity.acquire_capacity(ask(waiter, "0,0,1", one, priority, at)) is None
    order = []
    holder, holder_at = "holder", 1
    for _ in range(3):
        await store.capacity.release_capacity(holder, f"{holder_at:015d}:{holder}")
        for waiter, priority, at in (("low-early", 0, 2), ("high-late", 5, 3), ("low-late", 0, 4)):
            if (
                waiter not in order
                and await store.capacity.acquire_capacity(ask(waiter, "0,0,1", one, priority, at)) == "a:1"
            ):
                order.append(waiter)
                holder, holder_at = waiter, at
                break
    assert order == ["high-late", "low-early", "low-late"]


async def test_a_call_that_needs_more_holds_back_the_smaller_ones_behind_it(store):
    two = {"a:1": "0,0,2"}
    assert await store.capacity.acquire_capacity(ask("one", "0,0,1", two, at=1)) == "a:1"
    assert await store.capacity.acquire_capacity(ask("pair", "0,0,2", two, at=2)) is None  # waits for both GPUs
    assert (
        await store.capacity.acquire_capacity(ask("small", "0,0,1", two, at=3)) is None
    )  # would fit, but the pair came first
    assert await store.capacity.capacity_waiting() == 2
    assert (
        await store.capacity.release_capacity("one", f"{1:015d}:one") == 2
    )  # how many wait, told to the one giving back
    assert await store.capacity.acquire_capacity(ask("small", "0,0,1", two, at=3)) is None
    assert (
        await store.capacity.acquire_capacity(ask("pair", "0,0,2", two, at=2)) == "a:1"
    )  # granted when it asked, or on its behalf
    assert await store.capacity.release_capacity("small", f"{3:015d}:small") == 0  # a withdrawn waiter waits no more
    assert await store.capacity.capacity_waiting() == 0


async def test_a_lease_that_runs_out_gives_the_capacity_back(store):
    one = {"a:1": "0,0,1"}
    assert await store.capacity.acquire_capacity(ask("dies", "0,0,1", one, at=1, lease=0.2)) == "a:1"
    assert await store.capacity.acquire_capacity(ask("next", "0,0,1", one, at=2)) is None
    await store.capacity.renew_capacity(["dies"], 0.2)
    await asyncio.sleep(0.35)
    assert await store.capacity.acquire_capacity(ask("next", "0,0,1", one, at=2)) == "a:1"
    assert (await store.capacity.capacity_in_use())["a:1"] == "0,0,1"


def slice_ask(waiter: str, needs: str, candidates: dict[str, str], units: int, at: int = 0) -> CapacityRequest:
    return CapacityRequest(waiter, f"{at:015d}:{waiter}", 0, needs, candidates, 30.0, 3.0, units)


async def test_a_slice_gets_as_many_units_as_fit_and_gives_them_back_in_parts(store):
    five = {"a:1": "0,0,5"}
    first = await store.capacity.acquire_capacity_slice(slice_ask("s1", "0,0,2", five, units=8, at=1))
    assert first is not None and (first.address, first.units, first.waiting) == ("a:1", 2, 0)  # 2 x 2 of 5 GPUs
    assert (await store.capacity.capacity_in_use())["a:1"] == "0,0,4"
    again = await store.capacity.acquire_capacity_slice(slice_ask("s1", "0,0,2", five, units=8, at=1))
    assert again == first  # asking again reads the grant, it does not add to it
    last = await store.capacity.acquire_capacity_slice(slice_ask("s2", "0,0,1", five, units=3, at=2))
    assert last is not None and last.units == 1  # one GPU left
    assert await store.capacity.acquire_capacity_slice(slice_ask("s3", "0,0,1", five, units=1, at=3)) is None
    assert await store.capacity.release_capacity("s1", f"{1:015d}:s1", units=1) == 1  # s3 waits
    assert (await store.capacity.capacity_in_use())["a:1"] == "0,0,3"
    granted = await store.capacity.acquire_capacity_slice(slice_ask("s3", "0,0,1", five, units=1, at=3))
    assert granted is not None and granted.units == 1
    await store.capacity.release_capacity("s1", f"{1:015d}:s1", units=5)  # more than it holds: what is left
    assert (await store.capacity.capacity_in_use())["a:1"] == "0,0,2"
    for waiter, at in (("s2", 2), ("s3", 3)):
        await store.capacity.release_capacity(waiter, f"{at:015d}:{waiter}")
    assert (await store.capacity.capacity_in_use())["a:1"] == "0,0,0"


async def test_a_slice_s_lease_running_out_gives_back_every_unit_of_it(store):
    eight = {"a:1": "0,0,8"}
    request = CapacityRequest("slice", f"{1:015d}:slice", 0, "0,0,1", eight, 0.2, 3.0, 6)
    granted = await store.capacity.acquire_capacity_slice(request)
    assert granted is not None and granted.units == 6
    await store.capacity.release_capacity("slice", f"{1:015d}:slice", units=2)
    await asyncio.sleep(0.35)
    assert await store.capacity.acquire_capacity(ask("next", "0,0,8", eight, at=2)) == "a:1"  # all 8 free again


async def test_one_ask_grants_every_waiter_that_fits_in_order_however_long_the_queue(store):
    hundred = {"a:1": "0,0,100"}
    holder = CapacityRequest("holder", f"{1:015d}:holder", 0, "0,0,1", hundred, 30.0, 30.0, 100)
    granted = await store.capacity.acquire_capacity_slice(holder)
    assert granted is not None and granted.units == 100
    waiters = [(f"w{i:03d}", 10 + i) for i in range(150)]
    for waiter, at in waiters:
        assert await store.capacity.acquire_capacity(ask(waiter, "0,0,1", hundred, at=at)) is None
    await store.capacity.release_capacity("holder", f"{1:015d}:holder")
    first, *_ = waiters
    assert await store.capacity.acquire_capacity(ask(first[0], "0,0,1", hundred, at=first[1])) == "a:1"
    # that one ask granted the first 100 in order (read a page at a time); the other 50 still wait
    assert await store.capacity.capacity_waiting() == 50
    for waiter, at in waiters:
        address = await store.capacity.acquire_capacity(ask(waiter, "0,0,1", hundred, at=at))
        assert (address == "a:1") == (at < 110), waiter


async def test_a_queue_blocked_on_one_instance_does_not_hold_back_a_call_for_another(store):
    full, free = {"a:1": "0,0,1"}, {"b:1": "0,0,1"}
    assert await store.capacity.acquire_capacity(ask("holder", "0,0,1", full, at=1)) == "a:1"
    for i in range(100):
        assert await store.capacity.acquire_capacity(ask(f"w{i}", "0,0,1", full, at=10 + i)) is None
    assert await store.capacity.acquire_capacity(ask("elsewhere", "0,0,1", free, at=500)) == "b:1"


async def test_renewing_says_which_grants_the_ledger_no_longer_holds(store):
    one = {"a:1": "0,0,2"}
    assert await store.capacity.acquire_capacity(ask("kept", "0,0,1", one, at=1)) == "a:1"
    assert await store.capacity.acquire_capacity(ask("short", "0,0,1", one, at=2, lease=0.2)) == "a:1"
    await asyncio.sleep(0.35)
    assert await store.capacity.acquire_capacity(ask("next", "0,0,1", one, at=3)) == "a:1"  # short's ran out
    assert await store.capacity.renew_capacity(["kept", "short", "never"], 30.0) == ["short", "never"]
    assert await store.capacity.renew_capacity([], 30.0) == []
