"""A run resumed from its last write (here: parked on a wait, then signalled) replays the nodes an
earlier life finished without telling watchers again of what they did: an adaptive node's
transitions and a supervisor's decisions are in the task's log once each (and counted once by
the metrics), on both stores."""

from __future__ import annotations

from typing import Any

import pytest

from mcp_sdk.proto import task_pb2
from tests.helpers import create, events, parked, step, submit, wait_done, workflow

pytestmark = pytest.mark.asyncio
E = task_pb2.TaskEventType


async def go_on(client: Any, running: Any, task_id: str) -> None:
    """Once the task has parked, the signal that resumes it from the store."""
    await parked(client, task_id, running)
    await client.tasks.SignalTask(task_pb2.SignalTaskRequest(task_id=task_id, signal="ok"))


async def test_transitions_an_earlier_life_took_are_told_once(parking_server):
    running, client = parking_server
    states = [
        {"name": "first", "node": step("warm", "echo"), "transitions": [{"to": "second"}]},
        {"name": "second", "node": {"id": "ok", "wait": {"signal": "ok"}}, "transitions": [{"to": "done"}]},
        {"name": "done", "terminal": True, "node": step("fin", "echo")},
    ]
    await create(client, workflow("adapt", {"id": "a", "adaptive": {"states": states}}))
    task = await submit(client, "adapt")
    await go_on(client, running, task.task_id)
    assert (await wait_done(client, task.task_id)).status == task_pb2.TASK_STATUS_COMPLETED
    log = await events(client, task.task_id)
    assert [e.message for e in log if e.type == E.TASK_EVENT_TYPE_TRANSITION_TAKEN] == [
        "first -> second (default)",
        "second -> done (default)",
    ]
    assert E.TASK_EVENT_TYPE_RESUMED in [e.type for e in log]  # it was replayed in a second life
    counted = running.orchestrator.metrics.registry.get_sample_value("mcp_adaptive_transitions_total")
    assert counted == 2.0


async def test_decisions_of_rounds_an_earlier_life_finished_are_told_once(parking_server):
    running, client = parking_server
    child = {"id": "c", "sequence": {"children": [
        {"id": "ok", "wait": {"signal": "ok"}}, step("draft", "echo", "{'score': round > 1 ? 0.9 : 0.1}"),
    ]}}  # fmt: skip
    review = {"id": "s", "supervise": {"supervisor": "threshold_supervisor", "max_rounds": 3, "children": [child]}}
    await create(client, workflow("review", review))
    task = await submit(client, "review")
    await go_on(client, running, task.task_id)  # round 1's wait
    await go_on(client, running, task.task_id)  # round 2's, after the first decision (retry)
    assert (await wait_done(client, task.task_id)).status == task_pb2.TASK_STATUS_COMPLETED
    log = await events(client, task.task_id)
    decisions = [e.message.split(" (")[0] for e in log if e.type == E.TASK_EVENT_TYPE_SUPERVISOR_DECISION]
    assert decisions == ["round 1: retry", "round 2: accept"]
