"""join_branches starts its branches in waves, so that the calls of one wave go out (gRPC runs
each call in a task of its own, scheduled when the call is made) while the next wave does the
work before its calls, rather than after every branch has done it."""

from __future__ import annotations

import asyncio
import time

import pytest

from mcp_server.engine.context import NodeFailed, NodeResult
from mcp_server.engine.fanout import START_WAVE, join_branches
from mcp_server.engine.payload import Payload
from mcp_server.engine.suspensions import Suspensions

pytestmark = pytest.mark.asyncio


def branch_that_calls(index: int, seen: list[str]):
    async def run() -> NodeResult:
        seen.append(f"begin {index}")

        async def send() -> None:  # what gRPC's task for a call does first: put it on the wire
            seen.append(f"send {index}")

        sent = asyncio.get_running_loop().create_task(send())
        await sent
        return NodeResult(Payload.of_python({"i": index}))

    return run


async def test_the_first_wave_s_calls_go_out_before_the_next_wave_begins():
    seen: list[str] = []
    count = 3 * START_WAVE + 1
    results = await join_branches(
        "p", [branch_that_calls(i, seen) for i in range(count)], required=count, fail_fast=True, max_concurrency=count
    )
    assert sorted(results) == list(range(count))
    assert seen.index(f"send {START_WAVE - 1}") < seen.index(f"begin {START_WAVE}")  # a wave's calls, then the next
    assert seen.index(f"begin {START_WAVE - 1}") < seen.index("send 0")  # within a wave, the work comes first
    assert sorted(seen) == sorted([f"begin {i}" for i in range(count)] + [f"send {i}" for i in range(count)])


async def test_a_join_cancelled_while_it_starts_its_waves_leaves_no_branch_running():
    started: list[int] = []
    stopped: list[int] = []

    def forever(index: int):
        async def run() -> NodeResult:
            started.append(index)
            try:
                await asyncio.sleep(3600)
            finally:
                stopped.append(index)
            raise NodeFailed("INTERNAL", "unreachable")

        return run

    join = asyncio.ensure_future(
        join_branches("p", [forever(i) for i in range(5 * START_WAVE)], required=1, fail_fast=True, max_concurrency=999)
    )
    while len(started) < START_WAVE:  # the first wave is under way, the rest not yet started
        await asyncio.sleep(0)
    join.cancel()
    with pytest.raises(asyncio.CancelledError):
        await join
    assert sorted(stopped) == sorted(started) and len(started) < 5 * START_WAVE


async def test_a_run_does_not_park_between_waves_whose_first_branches_all_wait():
    """Two whole waves of waits (an hour away), then steps still running: the run must not park
    while the steps are still to start or in progress (it would wait the hour for them), and
    parks once only the waits are left."""
    suspensions = Suspensions(park_horizon=2.0)
    parked: list[float] = []
    suspensions.request_park = lambda: parked.append(time.monotonic())
    waits = 2 * START_WAVE

    def leaf(index: int):
        async def run() -> NodeResult:
            suspensions.leaf_started()
            try:
                if index < waits:
                    await suspensions.pause(f"w{index}", time.time() + 3600)
                else:
                    time.sleep(0.002)  # noqa: ASYNC251 -- blocks on purpose: the waves take longer than the park delay
                    await asyncio.sleep(0.1)  # a step's call
            finally:
                suspensions.leaf_ended()
            return NodeResult(Payload.of_python({"i": index}))

        return run

    started = time.monotonic()
    join = asyncio.ensure_future(
        join_branches(
            "p", [leaf(i) for i in range(waits + START_WAVE)], required=1, fail_fast=True, max_concurrency=999
        )
    )
    result = await asyncio.wait_for(join, 5)  # the first step's end meets the join
    assert list(result) and min(result) >= waits
    assert not any(moment < started + 0.1 for moment in parked), "parked while steps were still running"


async def test_a_bounded_fan_out_holds_only_its_running_branches_and_starts_them_in_order():
    """A map of 2,000 items two at a time holds two tasks, not 2,000 waiting for a slot: the next
    branch starts when one ends, in index order; cancelling the join cancels the two."""
    started: list[int] = []
    running: set[int] = set()
    most = 0
    tasks_seen = 0
    release = asyncio.Event()

    def branch(index: int):
        async def run() -> NodeResult:
            nonlocal most, tasks_seen
            started.append(index)
            running.add(index)
            most = max(most, len(running))
            tasks_seen = max(tasks_seen, len(asyncio.all_tasks()))
            try:
                if index == 1_500:
                    await release.wait()  # holds its slot until cancelled
                await asyncio.sleep(0)
                return NodeResult(Payload.of_python(index))
            finally:
                running.discard(index)

        return run

    baseline = len(asyncio.all_tasks())
    join = asyncio.ensure_future(
        join_branches("m", [branch(i) for i in range(2_000)], required=2_000, fail_fast=True, max_concurrency=2)
    )
    while 1_501 not in started:
        await asyncio.sleep(0)
    join.cancel()
    with pytest.raises(asyncio.CancelledError):
        await join
    assert started == list(range(started[-1] + 1))  # in index order, none skipped
    assert most == 2 and tasks_seen <= baseline + 1 + 2  # the join and its two branches
    assert not running  # the two running when it was cancelled were cancelled and awaited


async def test_a_failed_branch_of_a_bounded_fan_out_without_fail_fast_still_lets_the_rest_run():
    ran: list[int] = []

    def branch(index: int):
        async def run() -> NodeResult:
            ran.append(index)
            if index == 3:
                raise NodeFailed("INTERNAL", "three fails")
            return NodeResult(Payload.of_python(index))

        return run

    with pytest.raises(NodeFailed, match="1 of 10 branches failed"):
        await join_branches("m", [branch(i) for i in range(10)], required=10, fail_fast=False, max_concurrency=2)
    assert sorted(ran) == list(range(10))
    ran.clear()
    with pytest.raises(NodeFailed):
        await join_branches("m", [branch(i) for i in range(10)], required=10, fail_fast=True, max_concurrency=2)
    assert max(ran) < 6  # fail fast: the branches after the failure's slot were never started
