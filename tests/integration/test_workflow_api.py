"""WorkflowService over real gRPC: versions, paging, deletion, and validation with field details."""

from __future__ import annotations

import grpc
import pytest

from mcp_sdk.proto import workflow_pb2
from tests.helpers import create, step, violations, workflow

pytestmark = pytest.mark.asyncio


async def test_create_of_an_existing_id_makes_a_new_immutable_version(client):
    first = await create(client, workflow("wf-a", step("s", "echo"), description="one"))
    second = await create(client, workflow("wf-a", step("s", "append"), description="two"))
    assert (first.version, second.version) == (1, 2)
    latest = (await client.workflows.GetWorkflow(workflow_pb2.GetWorkflowRequest(workflow_id="wf-a"))).workflow
    old = (await client.workflows.GetWorkflow(workflow_pb2.GetWorkflowRequest(workflow_id="wf-a", version=1))).workflow
    assert latest.description == "two" and latest.version == 2
    assert old.description == "one" and old.root.step.protocol == "echo"
    assert old.create_time.seconds > 0


async def test_list_pages_through_every_workflow_once(client):
    for i in range(7):
        await create(client, workflow(f"wf-{i}", step("s", "echo")))
    seen, token = [], ""
    while True:
        reply = await client.workflows.ListWorkflows(workflow_pb2.ListWorkflowsRequest(page_size=3, page_token=token))
        seen += [w.workflow_id for w in reply.workflows]
        token = reply.next_page_token
        if not token:
            break
    assert seen == [f"wf-{i}" for i in range(7)]


async def test_delete_removes_every_version_and_then_answers_not_found(client):
    await create(client, workflow("gone", step("s", "echo")))
    await create(client, workflow("gone", step("s", "echo")))
    reply = await client.workflows.DeleteWorkflow(workflow_pb2.DeleteWorkflowRequest(workflow_id="gone"))
    assert reply.versions_deleted == 2
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.workflows.GetWorkflow(workflow_pb2.GetWorkflowRequest(workflow_id="gone"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.workflows.DeleteWorkflow(workflow_pb2.DeleteWorkflowRequest(workflow_id="gone"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_validate_reports_size_and_protocols_of_a_good_workflow(client):
    wf = workflow("ok", {"id": "root", "sequence": {"children": [step("a", "echo"), step("b", "emotion")]}})
    reply = await client.workflows.ValidateWorkflow(workflow_pb2.ValidateWorkflowRequest(workflow=wf))
    assert reply.valid and reply.node_count == 3 and reply.depth == 2
    assert list(reply.protocols) == ["echo", "emotion"]


BAD_WORKFLOWS = {
    "unknown protocol": (step("s", "no-such-protocol"), "workflow.root.step.protocol"),
    "duplicate node ids": (
        {"id": "r", "sequence": {"children": [step("x", "echo"), step("x", "echo")]}},
        "workflow.root.sequence.children[1].id",
    ),
    "empty sequence": ({"id": "r", "sequence": {}}, "workflow.root.sequence.children"),
    "empty parallel": ({"id": "r", "parallel": {}}, "workflow.root.parallel.children"),
    "supervise without children": (
        {"id": "r", "supervise": {"supervisor": "threshold_supervisor"}},
        "workflow.root.supervise.children",
    ),
    "transition to unknown state": (
        {
            "id": "r",
            "adaptive": {
                "states": [
                    {"name": "a", "node": step("a", "echo"), "transitions": [{"to": "nowhere"}]},
                    {"name": "b", "node": step("b", "echo"), "terminal": True},
                ]
            },
        },
        "workflow.root.adaptive.states[0].transitions[0].to",
    ),
    "CEL that does not compile": (step("s", "echo", "input.x +"), "workflow.root.step.input"),
    "quorum larger than children": (
        {
            "id": "r",
            "parallel": {"join": "JOIN_POLICY_QUORUM", "quorum": 3, "children": [step("a", "echo"), step("b", "echo")]},
        },
        "workflow.root.parallel.quorum",
    ),
    "node without a kind": ({"id": "r"}, "workflow.root"),
    "negative retry attempts": (step("s", "echo", retry={"max_attempts": -1}), "workflow.root.step.retry.max_attempts"),
    "non-retryable code in retry policy": (
        step("s", "echo", retry={"retryable_codes": ["INVALID_ARGUMENT"]}),
        "workflow.root.step.retry.retryable_codes",
    ),
    "zero timeout": (step("s", "echo", timeout="0s"), "workflow.root.step.timeout"),
    "absurd timeout": (step("s", "echo", timeout="99999999s"), "workflow.root.step.timeout"),
    "fallback to unknown protocol": (
        step("s", "echo", fallbacks=[{"protocol": "nope"}]),
        "workflow.root.step.fallbacks[0].protocol",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_WORKFLOWS))
async def test_invalid_workflow_is_rejected_with_the_field_named(client, case):
    root, field = BAD_WORKFLOWS[case]
    wf = workflow("bad", root)
    for call in (
        client.workflows.ValidateWorkflow(workflow_pb2.ValidateWorkflowRequest(workflow=wf)),
        client.workflows.CreateWorkflow(workflow_pb2.CreateWorkflowRequest(workflow=wf)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in violations(err.value), (field, violations(err.value))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.workflows.GetWorkflow(workflow_pb2.GetWorkflowRequest(workflow_id="bad"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_limits_on_depth_and_node_count_are_enforced(client):
    node = step("leaf", "echo")
    for i in range(20):
        node = {"id": f"level{i}", "sequence": {"children": [node]}}
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await create(client, workflow("deep", node))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert any("depth" in d for d in violations(err.value).values())
    wide = {"id": "r", "parallel": {"children": [step(f"s{i}", "echo") for i in range(600)]}}
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await create(client, workflow("wide", wide))
    assert "workflow.root" in violations(err.value)


async def test_missing_workflow_and_bad_ids_are_invalid_argument(client):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.workflows.CreateWorkflow(workflow_pb2.CreateWorkflowRequest())
    assert "workflow" in violations(err.value)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await create(client, workflow("has space", step("s", "echo")))
    assert "workflow.workflow_id" in violations(err.value)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.workflows.ListWorkflows(workflow_pb2.ListWorkflowsRequest(page_token="!!garbage"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_definition_with_hundreds_of_violations_still_gets_a_readable_answer(client):
    bad = {
        "id": "r",
        "sequence": {"children": [step(f"s{i}" * 20, f"missing-protocol-{i}" * 5, "1 +") for i in range(200)]},
    }
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.workflows.ValidateWorkflow(workflow_pb2.ValidateWorkflowRequest(workflow=workflow("many", bad)))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "more)" in err.value.details()
    assert 1 <= len(violations(err.value)) <= 15
