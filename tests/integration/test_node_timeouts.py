"""Node timeouts, on both stores, against the testkit plugin process: a composite node that runs
past its `timeout` has what still runs inside cancelled (at the plugin too) and fails
DEADLINE_EXCEEDED, which a recover node around it may take over; a task parked inside one is due
again when it runs out; a leaf is bounded by its own fields instead."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from mcp_sdk.proto import task_pb2
from tests.helpers import (
    create,
    parked,
    plugin_stats,
    result,
    step,
    step_states,
    submit,
    violations,
    wait_done,
    workflow,
)

pytestmark = pytest.mark.asyncio
S = task_pb2.TaskStatus
ONCE = {"max_attempts": 1}


def nap(node_id: str, ms: int) -> dict[str, Any]:
    return step(node_id, "sleep", f"{{'ms': {ms}}}", retry=ONCE)


async def test_a_sequence_past_its_timeout_is_cut_and_fails(parking_server, testkit):
    _, client = parking_server
    timed = {"id": "s", "timeout": "0.5s", "sequence": {"children": [nap("a", 300), nap("b", 3000), nap("c", 10)]}}
    await create(client, workflow("cut", timed))
    done = await wait_done(client, (await submit(client, "cut")).task_id)
    assert done.status == S.TASK_STATUS_FAILED
    assert done.error.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    assert "sequence s: its timeout of 0.5s ran out" in done.error.message
    states = step_states(done)
    assert states["s/a"].status == task_pb2.STEP_STATUS_COMPLETED
    assert states["s/b"].status == task_pb2.STEP_STATUS_CANCELLED and "s/c" not in states
    took = (done.end_time.ToNanoseconds() - states["s"].start_time.ToNanoseconds()) / 1e9
    assert 0.5 <= took < 2.5  # cut at its timeout, not at the end of the 3 s call
    async with asyncio.timeout(5):
        while (await plugin_stats(testkit))["cancelled"] < 1:  # the plugin's call was cancelled, not left
            await asyncio.sleep(0.05)


async def test_a_recover_node_takes_over_a_subtree_that_ran_out_of_time(parking_server):
    _, client = parking_server
    research = {"id": "research", "timeout": "0.4s", "parallel": {"children": [nap("deep", 3000), nap("wide", 3000)]}}
    quick = step("quick", "echo", "{'answer': 'short', 'why': error.code, 'where': error.step_path}")
    await create(client, workflow("sla", {"id": "r", "recover": {"body": research, "handler": quick}}))
    done = await wait_done(client, (await submit(client, "sla")).task_id)
    assert done.status == S.TASK_STATUS_COMPLETED, done.error
    assert result(done) == {"answer": "short", "why": "DEADLINE_EXCEEDED", "where": "r/research"}
    states = step_states(done)
    assert states["r/research/deep"].status == states["r/research/wide"].status == task_pb2.STEP_STATUS_CANCELLED


async def test_a_task_parked_inside_a_timed_node_is_due_when_it_runs_out(parking_server):
    running, client = parking_server
    waits = {"id": "s", "timeout": "2s", "sequence": {"children": [{"id": "ask", "wait": {"signal": "never"}}]}}
    await create(client, workflow("parked", waits))
    task = await submit(client, "parked")
    await parked(client, task.task_id, running)  # nothing of it runs until it is due
    done = await wait_done(client, task.task_id)
    assert done.status == S.TASK_STATUS_FAILED and "its timeout of 2s ran out" in done.error.message
    states = step_states(done)
    assert states["s/ask"].status == task_pb2.STEP_STATUS_CANCELLED
    took = (done.end_time.ToNanoseconds() - states["s"].start_time.ToNanoseconds()) / 1e9
    assert 2.0 <= took < 4.0  # resumed by its due time, not left waiting for a signal


async def test_a_node_s_timeout_is_refused_where_the_node_has_its_own(parking_server):
    _, client = parking_server
    bad = {
        "id": "root",
        "sequence": {
            "children": [
                {**nap("a", 1), "timeout": "1s"},
                {"id": "w", "timeout": "1s", "wait": {"signal": "x"}},
                {"id": "p", "timeout": "0s", "parallel": {"children": [nap("b", 1)]}},
            ]
        },
    }
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await create(client, workflow("bad-timeouts", bad))
    found = violations(refused.value)
    assert "its own step.timeout" in found["workflow.root.sequence.children[0].timeout"]
    assert "its own wait.timeout" in found["workflow.root.sequence.children[1].timeout"]
    assert found["workflow.root.sequence.children[2].timeout"] == "must be positive"
