"""Steps an earlier life of a run left unfinished (its replica was killed) and this life did not
come back to: a run that ends otherwise marks them cancelled, and only them (runner._finish), so
no finished task shows a step running for ever; inside a node whose timeout ran out meanwhile,
they are marked so at once (executor._within)."""

from __future__ import annotations

import pytest

from mcp_sdk.proto import task_pb2
from mcp_server.engine.context import RunContext
from mcp_server.engine.events import now
from mcp_server.engine.payload import Payload
from mcp_server.engine.ports import StepRecord
from mcp_server.engine.records import ValueSink, step_record
from tests.contract.conftest import checkpoint

pytestmark = pytest.mark.asyncio
RUNNING, COMPLETED, CANCELLED = (
    task_pb2.STEP_STATUS_RUNNING,
    task_pb2.STEP_STATUS_COMPLETED,
    task_pb2.STEP_STATUS_CANCELLED,
)


async def resumed(running, states: list[task_pb2.StepState]) -> RunContext:
    """A run of the claimed task resumed from a write of `states` by an earlier life."""
    store, claimed, token = running
    sink = ValueSink()
    records = [
        StepRecord(i, s.path, step_record(s, None, Payload.of_python({}) if s.status == COMPLETED else None, sink))
        for i, s in enumerate(states)
    ]
    await store.tasks.save_checkpoint(
        checkpoint(claimed, token, task_pb2.TASK_STATUS_RUNNING, [], records, sink.take())
    )
    claimed.step_count = len(states)
    run = RunContext(task=claimed, store=store.tasks, caller=None, lease_token=token, task_input=Payload.of_python({}))
    await run.restore()
    return run


def state(path: str, kind: str, status: int) -> task_pb2.StepState:
    return task_pb2.StepState(path=path, node_id=path.rsplit("/", 1)[-1], kind=kind, status=status, start_time=now())


async def test_only_the_steps_this_life_did_not_come_back_to_are_cancelled(running):
    run = await resumed(
        running,
        [
            state("s", "sequence", RUNNING),
            state("s/p", "parallel", RUNNING),
            state("s/p/a", "step", COMPLETED),
            state("s/p/b", "step", RUNNING),
            state("s/q", "step", RUNNING),
        ],
    )
    await run.begin("s", "s", "sequence")  # this life came back to the sequence and the parallel
    await run.begin("s/p", "p", "parallel")
    run.abandon_unfinished("CANCELLED", "not come back to", earlier_lives_only=True)

    states = {path: run.state(path) for path in ("s", "s/p", "s/p/a", "s/p/b", "s/q")}
    assert states["s"].status == states["s/p"].status == RUNNING  # this life runs them still
    assert states["s/p/a"].status == COMPLETED
    assert states["s/p/b"].status == states["s/q"].status == CANCELLED
    assert states["s/q"].error.message == "not come back to" and states["s/q"].HasField("end_time")


async def test_within_a_node_only_its_own_steps_are_cancelled(running):
    run = await resumed(
        running, [state("p", "parallel", RUNNING), state("p/a", "step", RUNNING), state("q", "step", RUNNING)]
    )
    await run.begin("p", "p", "parallel")
    run.abandon_unfinished("CANCELLED", "ran out", earlier_lives_only=True, within="p")

    assert run.state("p").status == RUNNING  # the node itself fails as its owner says
    assert run.state("p/a").status == CANCELLED
    assert run.state("q").status == RUNNING  # outside it
