"""join_branches starts its branches in waves, so that the calls of one wave go out (gRPC runs
each call in a task of its own, scheduled when the call is made) while the next wave does the
work before its calls, rather than after every branch has done it."""

from __future__ import annotations

import asyncio

import pytest

from mcp_server.engine.context import NodeFailed, NodeResult
from mcp_server.engine.fanout import START_WAVE, join_branches
from mcp_server.engine.payload import Payload

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
