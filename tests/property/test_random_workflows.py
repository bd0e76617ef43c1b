"""Property, on both stores (tests/property/conftest.py): any well-formed definition (subworkflows,
recover and agent nodes included) either completes or fails with a clear error; none hangs.
Cancelled at any moment, it ends, and no step of it is left running in its record."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcp_sdk.proto import task_pb2
from tests.helpers import create, submit, wait_done, workflow
from tests.support.random_workflows import definitions, store_subworkflows

pytestmark = pytest.mark.asyncio


def creating(client: Any):
    async def create_one(workflow_id: str, root: dict[str, Any]) -> None:
        await create(client, workflow(workflow_id, root))

    return create_one


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(root=definitions)
async def test_random_well_formed_workflows_complete_or_fail_clearly(client, root):
    await store_subworkflows(creating(client), root)
    wf = workflow(f"random-{uuid.uuid4().hex[:8]}", root)
    await create(client, wf)
    task = await submit(client, wf.workflow_id, {"n": 0})
    finished = await asyncio.wait_for(wait_done(client, task.task_id, timeout=30), 35)
    assert finished.status in (task_pb2.TASK_STATUS_COMPLETED, task_pb2.TASK_STATUS_FAILED)
    if finished.status == task_pb2.TASK_STATUS_FAILED:
        assert finished.error.code != 0 and finished.error.message
        assert "internal error" not in finished.error.message
    else:
        assert finished.HasField("result")
    assert all(s.status != task_pb2.STEP_STATUS_RUNNING for s in finished.steps)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(root=definitions, delay=st.sampled_from([0.0, 0.002, 0.01, 0.03, 0.08]))
async def test_random_workflows_cancelled_at_any_moment_end_with_no_step_left_running(client, root, delay):
    await store_subworkflows(creating(client), root)
    wf = workflow(f"cancelled-{uuid.uuid4().hex[:8]}", root)
    await create(client, wf)
    task = await submit(client, wf.workflow_id, {"n": 0})
    await asyncio.sleep(delay)
    try:
        await client.tasks.CancelTask(task_pb2.CancelTaskRequest(task_id=task.task_id, reason="property"))
    except grpc.aio.AioRpcError as error:  # it ended before the cancel came
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error
    finished = await asyncio.wait_for(wait_done(client, task.task_id, timeout=30), 35)

    assert finished.status in (
        task_pb2.TASK_STATUS_COMPLETED,
        task_pb2.TASK_STATUS_FAILED,
        task_pb2.TASK_STATUS_CANCELLED,
    )
    assert "internal error" not in finished.error.message
    if finished.status == task_pb2.TASK_STATUS_CANCELLED and finished.HasField("cancel_request"):
        assert finished.cancel_request.outcome in ("done", "failed", "cut_short")
    running = [s.path for s in finished.steps if s.status == task_pb2.STEP_STATUS_RUNNING]
    assert not running
    for state in finished.steps:
        assert state.HasField("end_time"), state.path
        assert state.end_time.ToNanoseconds() >= state.start_time.ToNanoseconds(), state.path
