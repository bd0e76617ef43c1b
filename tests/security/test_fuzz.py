"""Hostile and random input against a running server: it never crashes, never answers
UNKNOWN or INTERNAL for bad input, never hangs, and loses no task it accepted."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcp_sdk.proto import task_pb2, workflow_pb2
from tests.helpers import create, step, wait_done, workflow

pytestmark = pytest.mark.asyncio
FORBIDDEN = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)

json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=50),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20,
)
weird_text = st.text(max_size=300) | st.sampled_from(
    ["", " ", "../../etc/passwd", "a" * 5000, "\x00", "%s%n", "' OR 1=1 --", "🙂" * 50]
)


async def call(awaitable: Any) -> grpc.StatusCode:
    """Run one RPC with a deadline; return its status code."""
    try:
        await asyncio.wait_for(awaitable, 10)
        return grpc.StatusCode.OK
    except grpc.aio.AioRpcError as exc:
        return exc.code()


@FUZZ
@given(
    workflow_id=weird_text,
    data=st.dictionaries(st.text(max_size=20), json_values, max_size=6),
    priority=st.integers(-(2**31), 2**31 - 1),
    request_id=weird_text,
    labels=st.dictionaries(st.text(max_size=20), st.text(max_size=20), max_size=4),
)
async def test_random_submissions_get_a_clear_answer(client, workflow_id, data, priority, request_id, labels):
    request = task_pb2.SubmitTaskRequest(
        workflow_id=workflow_id, priority=priority, request_id=request_id, labels=labels
    )
    request.input_data.update(data)
    assert await call(client.tasks.SubmitTask(request)) not in FORBIDDEN


@FUZZ
@given(
    task_id=weird_text,
    page_size=st.integers(-(2**31), 2**31 - 1),
    page_token=weird_text,
    statuses=st.lists(st.integers(0, 2**31 - 1), max_size=4),
    after=st.integers(0, 2**64 - 1),
)
async def test_random_reads_get_a_clear_answer(client, task_id, page_size, page_token, statuses, after):
    codes = [
        await call(client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=task_id))),
        await call(client.tasks.CancelTask(task_pb2.CancelTaskRequest(task_id=task_id, reason=page_token))),
        await call(
            client.tasks.ListTasks(
                task_pb2.ListTasksRequest(page_size=page_size, page_token=page_token, statuses=statuses)
            )
        ),
        await call(
            client.workflows.ListWorkflows(
                workflow_pb2.ListWorkflowsRequest(page_size=page_size, page_token=page_token)
            )
        ),
        await call(
            client.workflows.GetWorkflow(workflow_pb2.GetWorkflowRequest(workflow_id=task_id, version=page_size))
        ),
    ]

    async def drain() -> None:
        async for _ in client.tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=task_id, after_sequence=after)):
            pass

    codes.append(await call(drain()))
    assert not FORBIDDEN & set(codes), codes


node_kinds = st.sampled_from(["step", "sequence", "parallel", "map", "supervise", "adaptive", None])
cel = st.sampled_from(
    ["", "input.x", "1 +", "input.a.b.c", "[1,2].map(x, x*2)", "size(input) > 0", "{'a': 1}", "'x' * 3", "()"]
) | st.text(max_size=40)


@st.composite
def random_nodes(draw: Any, depth: int = 0) -> dict[str, Any]:
    kind = draw(node_kinds) if depth < 4 else "step"
    node: dict[str, Any] = {"id": draw(st.text(max_size=12) | st.sampled_from(["a", "b", "a"]))}
    children = st.lists(random_nodes(depth + 1), max_size=3)  # type: ignore[call-arg]
    if kind == "step":
        node["step"] = {
            "protocol": draw(st.sampled_from(["echo", "nope", "", "sleep"])),
            "input": draw(cel),
            "retry": {"max_attempts": draw(st.integers(-5, 200)), "jitter": draw(st.floats(-1, 2))},
        }
    elif kind in ("sequence", "parallel", "supervise"):
        node[kind] = {"children": draw(children)}
        if kind == "parallel":
            node[kind]["join"] = draw(st.sampled_from(["JOIN_POLICY_ANY", "JOIN_POLICY_QUORUM", "JOIN_POLICY_ALL"]))
            node[kind]["quorum"] = draw(st.integers(-3, 5))
        if kind == "supervise":
            node[kind]["supervisor"] = draw(st.sampled_from(["threshold_supervisor", "echo", "", "nope"]))
            node[kind]["max_rounds"] = draw(st.integers(-2, 50))
    elif kind == "map":
        node["map"] = {
            "items": draw(cel),
            "body": draw(random_nodes(depth + 1)),
            "max_concurrency": draw(st.integers(-2, 5000)),
        }
    elif kind == "adaptive":
        names = draw(st.lists(st.sampled_from(["s1", "s2", "s3", ""]), max_size=3))
        node["adaptive"] = {
            "max_transitions": draw(st.integers(-1, 500)),
            "states": [
                {
                    "name": n,
                    "node": draw(random_nodes(depth + 1)),
                    "terminal": draw(st.booleans()),
                    "transitions": [{"when": draw(cel), "to": draw(st.sampled_from(["s1", "s2", "zz"]))}],
                }
                for n in names
            ],
        }
    return node


@FUZZ
@given(root=random_nodes(), workflow_id=st.sampled_from(["fuzz", "fuzz-2", "bad id"]))
async def test_random_definitions_are_accepted_or_rejected_cleanly_and_accepted_tasks_finish(client, root, workflow_id):
    definition = json_format.ParseDict({"workflow_id": workflow_id, "root": root}, workflow_pb2.Workflow())
    code = await call(client.workflows.ValidateWorkflow(workflow_pb2.ValidateWorkflowRequest(workflow=definition)))
    assert code in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT)
    if code == grpc.StatusCode.OK:
        created = await create(client, definition)
        task = (
            await client.tasks.SubmitTask(
                task_pb2.SubmitTaskRequest(workflow_id=created.workflow_id, workflow_version=created.version)
            )
        ).task
        finished = await wait_done(client, task.task_id, timeout=30)  # accepted => reaches an end, never lost
        assert finished.status in (task_pb2.TASK_STATUS_COMPLETED, task_pb2.TASK_STATUS_FAILED)
        assert "internal error" not in finished.error.message


async def test_the_server_is_still_healthy_and_working_after_the_fuzzing(server, client):
    reply = await health_pb2_grpc.HealthStub(client.channel).Check(health_pb2.HealthCheckRequest())
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    await create(client, workflow("after-fuzz", step("s", "echo", "{'ok': true}")))
    task = (await client.tasks.SubmitTask(task_pb2.SubmitTaskRequest(workflow_id="after-fuzz"))).task
    assert (await wait_done(client, task.task_id)).status == task_pb2.TASK_STATUS_COMPLETED
