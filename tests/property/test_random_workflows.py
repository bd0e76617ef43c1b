"""Property: any well-formed definition (subworkflows, recover and agent nodes included) either completes
or fails with a clear error; none hangs. Cancelled at any moment, it ends, and no step of it is left
running in its record."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcp_sdk.proto import task_pb2
from tests.helpers import create, submit, wait_done, workflow

pytestmark = pytest.mark.asyncio
_ids = itertools.count()

LEAVES = [
    ("echo", ""),
    ("counter", "{'n': 1}"),
    ("sleep", "{'ms': 5}"),
    ("fail", "{'code': 'INVALID_ARGUMENT'}"),
    ("fail", "{'code': 'UNAVAILABLE'}"),
    ("flaky", "{'failures': 1}"),
    ("echo", "{'v': input.missing}"),  # a CEL runtime error
]


def leaf() -> st.SearchStrategy[dict[str, Any]]:
    def build(choice: tuple[str, str]) -> dict[str, Any]:
        protocol, expr = choice
        body: dict[str, Any] = {"protocol": protocol, "retry": {"max_attempts": 2, "initial_backoff": "0.001s"}}
        if expr:
            body["input"] = expr
        return {"id": f"n{next(_ids)}", "step": body}

    return st.sampled_from(LEAVES).map(build)


def composite(children: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """A composite node of any kind, sometimes with a timeout (short enough to cut some runs)."""
    timeouts = st.sampled_from([None, None, "0.01s", "0.2s"])
    return st.tuples(kinds(children), timeouts).map(lambda t: {**t[0], "timeout": t[1]} if t[1] else t[0])


def kinds(children: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    many = st.lists(children, min_size=1, max_size=3)
    return st.one_of(
        many.map(lambda c: {"id": f"n{next(_ids)}", "sequence": {"children": c}}),
        st.tuples(many, st.sampled_from(["JOIN_POLICY_ALL", "JOIN_POLICY_ANY"]), st.booleans()).map(
            lambda t: {"id": f"n{next(_ids)}", "parallel": {"children": t[0], "join": t[1], "fail_fast": t[2]}}
        ),
        children.map(
            lambda body: {"id": f"n{next(_ids)}", "map": {"items": "[1, 2, 3]", "body": body, "max_concurrency": 2}}
        ),
        many.map(
            lambda c: {
                "id": f"n{next(_ids)}",
                "supervise": {"supervisor": "threshold_supervisor", "max_rounds": 2, "children": c},
            }
        ),
        # run as a subworkflow: stored first under its own id (see `store_subworkflows`)
        children.map(
            lambda body: {"id": f"n{next(_ids)}", "subworkflow": {"workflow_id": f"sub-{next(_ids)}"}, "define": body}
        ),
        st.tuples(children, children).map(
            lambda pair: {
                "id": f"n{next(_ids)}",
                "adaptive": {
                    "max_transitions": 3,
                    "states": [
                        {
                            "name": "a",
                            "node": pair[0],
                            "transitions": [{"when": "size(steps) > 100", "to": "a"}, {"to": "b"}],
                        },
                        {"name": "b", "node": pair[1], "terminal": True},
                    ],
                },
            }
        ),
        st.tuples(
            children, children, st.sampled_from([[], ["UNAVAILABLE"], ["INVALID_ARGUMENT", "UNKNOWN"]]), st.booleans()
        ).map(
            lambda t: {
                "id": f"n{next(_ids)}",
                "recover": {"body": t[0], "handler": t[1], "codes": t[2], "on_cancel": t[3]},
            }
        ),
        st.tuples(children, children).map(agent),
    )


AGENT_SCRIPT = "[[{'id': 'a', 'name': 't0'}, {'id': 'b', 'name': 't1'}], [{'id': 'c', 'name': 't0'}]]"


def agent(tools: tuple[dict[str, Any], dict[str, Any]]) -> dict[str, Any]:
    """An agent whose model (testkit's scripted_model) calls both tools, then the first again."""
    model = {"id": f"n{next(_ids)}", "step": {"protocol": "scripted_model"}}
    messages = "[{'role': 'user', 'content': 'go', 'script': " + AGENT_SCRIPT + "}]"
    named = [{"name": f"t{i}", "node": node} for i, node in enumerate(tools)]
    return {"id": f"n{next(_ids)}", "agent": {"model": model, "messages": messages, "tools": named}}


definitions = st.recursive(leaf(), composite, max_leaves=8)


async def store_subworkflows(client: Any, node: dict[str, Any]) -> None:
    """Store the workflow each generated subworkflow node runs (innermost first), in place of its
    `define`."""
    below = [
        *node.get("sequence", {}).get("children", []),
        *node.get("parallel", {}).get("children", []),
        *node.get("supervise", {}).get("children", []),
        *([node["map"]["body"]] if "map" in node else []),
        *(state["node"] for state in node.get("adaptive", {}).get("states", [])),
        *(node["recover"][part] for part in ("body", "handler") if "recover" in node),
        *(tool["node"] for tool in node.get("agent", {}).get("tools", [])),
    ]
    for child in below:
        await store_subworkflows(client, child)
    if "define" in node:
        body = node.pop("define")
        await store_subworkflows(client, body)
        await create(client, workflow(node["subworkflow"]["workflow_id"], body))


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(root=definitions)
async def test_random_well_formed_workflows_complete_or_fail_clearly(client, root):
    await store_subworkflows(client, root)
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
    await store_subworkflows(client, root)
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
