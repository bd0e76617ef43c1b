"""Subworkflows, on both stores, against the testkit plugin process: a workflow runs another
stored workflow's root as one node, pinned to the version it named when it was created, with
CEL variables of its own; its waits, reruns and resumes work as anywhere else in the tree."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from mcp_sdk import Client as SdkClient
from mcp_sdk.errors import McpError
from mcp_sdk.proto import task_pb2, workflow_pb2
from mcp_server.settings import Limits
from tests.conftest import client_for
from tests.helpers import create, result, seq, step, step_states, submit, violations, wait_done, workflow

pytestmark = pytest.mark.asyncio
S = task_pb2.TaskStatus


def sub(node_id: str, workflow_id: str, version: int = 0, **options: Any) -> dict[str, Any]:
    return {"id": node_id, "subworkflow": {"workflow_id": workflow_id, "version": str(version), **options}}


async def get(client: Any, workflow_id: str, version: int = 0) -> workflow_pb2.Workflow:
    reply = await client.workflows.GetWorkflow(
        workflow_pb2.GetWorkflowRequest(workflow_id=workflow_id, version=version)
    )
    return reply.workflow


async def refused(client: Any, wf: workflow_pb2.Workflow) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await create(client, wf)
    return caught.value


# The child reads its own `input` and `steps`; it has a node `a` as the parent does.
CHILD = seq(
    "croot",
    step("a", "append", "{'text': input.text + '[', 'suffix': 'child-a'}"),
    step("c2", "echo", "{'text': steps.a.text + ']', 'given': input.text}"),
)


async def test_a_subworkflow_runs_inside_the_task_with_its_own_input_and_steps(parking_server):
    _, client = parking_server
    await create(client, workflow("child", CHILD))
    parent = seq(
        "root",
        step("a", "append", "{'text': input.text, 'suffix': 'parent-a'}"),
        sub("inner", "child", input="{'text': prev.text + '>'}"),
        step("after", "echo", "{'inner': steps.inner.text, 'mine': steps.a.text}"),
    )
    await create(client, workflow("parent", parent))
    done = await wait_done(client, (await submit(client, "parent", {"text": "x"})).task_id)

    assert done.status == S.TASK_STATUS_COMPLETED
    assert result(done) == {"inner": "xparent-a>[child-a]", "mine": "xparent-a"}
    states = step_states(done)
    assert list(states) == ["root", "root/a", "root/inner", "root/inner/croot", "root/inner/croot/a",
                            "root/inner/croot/c2", "root/after"]  # fmt: skip
    assert states["root/inner"].kind == "subworkflow"
    assert json_format.MessageToDict(states["root/inner/croot/c2"].output)["given"] == "xparent-a>"


async def test_the_version_is_pinned_at_create_and_outlives_the_child_workflow(parking_server):
    _, client = parking_server
    await create(client, workflow("tagger", step("t", "echo", "{'tag': 'v1'}")))
    parent = await create(client, workflow("pinned", seq("root", sub("s", "tagger"))))
    stored = (await get(client, "pinned")).root.sequence.children[0].subworkflow
    assert stored.version == 1 and stored.definition.root.step.input == "{'tag': 'v1'}"
    assert stored.definition.workflow_id == "tagger" and stored.definition.version == 1
    assert parent.root.sequence.children[0].subworkflow.version == 1  # the create's answer says so too

    await create(client, workflow("tagger", step("t", "echo", "{'tag': 'v2'}")))
    first = await wait_done(client, (await submit(client, "pinned")).task_id)
    assert result(first) == {"tag": "v1"}
    latest = await create(client, workflow("pinned", seq("root", sub("s", "tagger"))))
    assert latest.root.sequence.children[0].subworkflow.version == 2
    explicit = await create(client, workflow("pinned", seq("root", sub("s", "tagger", version=1))))
    assert explicit.root.sequence.children[0].subworkflow.definition.root.step.input == "{'tag': 'v1'}"

    await client.workflows.DeleteWorkflow(workflow_pb2.DeleteWorkflowRequest(workflow_id="tagger"))
    second = await wait_done(client, (await submit(client, "pinned", workflow_version=2)).task_id)
    assert second.status == S.TASK_STATUS_COMPLETED and result(second) == {"tag": "v2"}


async def test_a_definition_sent_by_the_client_is_replaced_by_the_stored_one(parking_server):
    _, client = parking_server
    await create(client, workflow("honest", step("h", "echo", "{'from': 'store'}")))
    wf = workflow("smuggler", sub("s", "honest"))
    wf.root.subworkflow.definition.CopyFrom(workflow("honest", step("h", "echo", "{'from': 'client'}")))
    await create(client, wf)
    done = await wait_done(client, (await submit(client, "smuggler")).task_id)
    assert result(done) == {"from": "store"}


async def test_a_subworkflow_that_names_nothing_stored_is_refused_naming_the_field(parking_server):
    _, client = parking_server
    await create(client, workflow("exists", step("e", "echo")))
    bad = seq("root", sub("s1", "missing"), sub("s2", "exists", version=7), sub("s3", "not a name"))
    error = await refused(client, workflow("dangling", bad))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    field = "workflow.root.sequence.children[{}].subworkflow.{}"
    assert violations(error) == {
        field.format(0, "workflow_id"): "workflow 'missing' is not stored",
        field.format(1, "workflow_id"): "workflow 'exists' has no version 7",
        field.format(2, "workflow_id"): violations(error)[field.format(2, "workflow_id")],
    }
    assert "letters" in violations(error)[field.format(2, "workflow_id")]
    negative = workflow("negative", sub("s", "exists"))
    negative.root.subworkflow.version = -1
    assert violations(await refused(client, negative)) == {
        "workflow.root.subworkflow.version": "must be 0 (the latest) or a version number"
    }
    reply = await client.workflows.ValidateWorkflow(
        workflow_pb2.ValidateWorkflowRequest(workflow=workflow("checked", sub("s", "exists")))
    )
    assert reply.valid


async def test_nodes_and_depth_count_across_the_subworkflow(server_factory):
    running = await server_factory(store="sqlite://:memory:", limits=Limits(max_workflow_nodes=6, max_workflow_depth=4))
    client = client_for(running)
    await create(client, workflow("four", seq("r", step("a", "echo"), step("b", "echo"), step("c", "echo"))))
    error = await refused(client, workflow("seven", seq("root", step("x", "echo"), sub("s", "four"))))
    assert violations(error) == {"workflow.root": "has 7 nodes; the limit is 6"}
    await create(client, workflow("deep", seq("d1", seq("d2", seq("d3", step("d4", "echo"))))))
    error = await refused(client, workflow("deeper", sub("s", "deep")))
    assert violations(error) == {
        "workflow.root.subworkflow.definition.root.sequence.children[0].sequence.children[0].sequence.children[0]": (
            "nesting depth 5 exceeds the limit of 4"
        )
    }
    await client.channel.close()


async def test_a_subworkflow_keeps_its_own_defaults(parking_server, testkit):
    _, client = parking_server
    once = {"defaults": {"retry": {"max_attempts": 1}}}
    await create(client, workflow("strict", step("f", "flaky", "{'failures': 1}"), **once))
    await create(client, workflow("lenient", seq("root", sub("s", "strict"), step("g", "flaky", "{'failures': 1}"))))
    done = await wait_done(client, (await submit(client, "lenient")).task_id)
    assert done.status == S.TASK_STATUS_FAILED
    states = step_states(done)
    assert states["root/s/f"].attempts == 1 and states["root/s/f"].error.code == grpc.StatusCode.UNAVAILABLE.value[0]
    loose = workflow("loose", seq("root", step("g", "flaky", "{'failures': 1}"), sub("s", "strict", input="{}")))
    await create(client, loose)
    done = await wait_done(client, (await submit(client, "loose")).task_id)
    assert step_states(done)["root/g"].attempts == 2  # the enclosing workflow's default (3 attempts)


async def test_a_wait_inside_a_subworkflow_parks_the_task_and_its_signal_resumes_it(parking_server):
    running, client = parking_server
    approval = seq("approve", {"id": "ask", "wait": {"signal": "approved"}}, step("ok", "echo", "{'by': input.who}"))
    await create(client, workflow("approval", approval))
    await create(client, workflow("review", seq("root", sub("gate", "approval", input="{'who': input.author}"))))
    task = await submit(client, "review", {"author": "ada"})
    async with asyncio.timeout(10):
        while (await client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=task.task_id))).task.status != (
            S.TASK_STATUS_WAITING
        ):
            await asyncio.sleep(0.02)
    assert running.orchestrator.dispatcher.in_flight == 0  # parked: the run ended, to resume from the store
    reply = await client.tasks.SignalTask(task_pb2.SignalTaskRequest(task_id=task.task_id, signal="approved"))
    assert reply.step_path == "root/gate/approve/ask"
    done = await wait_done(client, task.task_id)
    assert done.status == S.TASK_STATUS_COMPLETED and result(done) == {"by": "ada"}


async def test_a_rerun_from_a_step_inside_the_subworkflow_keeps_what_came_before(parking_server, testkit):
    _, client = parking_server
    three = seq("steps", step("s1", "append"), step("s2", "append"), step("s3", "append"))
    await create(client, workflow("three", three))
    await create(client, workflow("outer", seq("root", step("o1", "append"), sub("in", "three"))))
    original = await wait_done(client, (await submit(client, "outer", {"text": ">"})).task_id)
    assert result(original)["text"] == ">o1s1s2s3"

    reply = await client.tasks.RerunTask(
        task_pb2.RerunTaskRequest(task_id=original.task_id, from_step_path="root/in/steps/s2")
    )
    again = await wait_done(client, reply.task.task_id)
    assert again.status == S.TASK_STATUS_COMPLETED and result(again)["text"] == ">o1s1s2s3"
    states = step_states(again)
    assert [p for p, s in states.items() if s.reused] == ["root/o1", "root/in/steps/s1"]


async def test_a_rerun_on_a_new_version_keeps_steps_inside_a_subworkflow(parking_server):
    """The new version is checked for a node at each kept step's path, a subworkflow's inside too
    (it was refused: "the workflow version has no node at this path")."""
    _, client = parking_server
    failing = step("s2", "fail", "{'code': 'UNAVAILABLE'}", retry={"max_attempts": 1})
    await create(client, workflow("inner", seq("steps", step("s1", "echo"), failing)))
    outer = seq("root", sub("in", "inner"))
    await create(client, workflow("outer", outer))
    done = await wait_done(client, (await submit(client, "outer", {"topic": "tea"})).task_id)
    assert done.status == S.TASK_STATUS_FAILED
    await create(client, workflow("inner", seq("steps", step("s1", "echo"), step("s2", "echo"))))
    version = (await create(client, workflow("outer", outer))).version  # pins the mended inner
    reply = await client.tasks.RerunTask(task_pb2.RerunTaskRequest(task_id=done.task_id, workflow_version=version))
    again = await wait_done(client, reply.task.task_id)
    assert again.status == S.TASK_STATUS_COMPLETED and result(again) == {"topic": "tea"}
    assert [p for p, s in step_states(again).items() if s.reused] == ["root/in/steps/s1"]


async def test_a_map_runs_a_subworkflow_per_item_each_with_steps_of_its_own(parking_server):
    _, client = parking_server
    await create(
        client,
        workflow(
            "shout",
            seq(
                "r",
                step("up", "echo", "{'w': input.word + '!'}"),
                step("out", "echo", "{'said': steps.up.w, 'n': input.n}"),
            ),
        ),
    )
    body = sub("each", "shout", input="{'word': item, 'n': index}")
    await create(
        client, workflow("chorus", {"id": "m", "map": {"items": "input.words", "body": body, "max_concurrency": 2}})
    )
    done = await wait_done(client, (await submit(client, "chorus", {"words": ["a", "b", "c"]})).task_id)
    assert done.status == S.TASK_STATUS_COMPLETED
    assert result(done) == [{"said": "a!", "n": 0}, {"said": "b!", "n": 1}, {"said": "c!", "n": 2}]
    assert "m/each[2]/r/out" in step_states(done)


async def test_a_chain_of_subworkflows_too_deep_to_read_back_is_refused(server_factory):
    """Each pinned subworkflow nests three protobuf messages where a node nests two: with the depth
    limit raised, a chain of them would be stored and never read back (protobuf stops at 100)."""
    running = await server_factory(store="sqlite://:memory:", limits=Limits(max_workflow_depth=64))
    client = client_for(running)
    await create(client, workflow("w0", step("s", "echo")))
    error = None
    for n in range(1, 40):
        try:
            await create(client, workflow(f"w{n}", sub("s", f"w{n - 1}")))
        except grpc.aio.AioRpcError as refused_one:
            error = refused_one
            break
        done = await wait_done(client, (await submit(client, f"w{n}", {"n": n})).task_id)
        assert done.status == S.TASK_STATUS_COMPLETED and (await get(client, f"w{n}")).workflow_id == f"w{n}"
    assert error is not None and n > 16, n
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and violations(error) == {
        "workflow.root": "nested too deep to be read back; nest fewer nodes"
    }
    await client.channel.close()


async def test_many_copies_of_a_large_subworkflow_are_refused_before_they_are_made(server_factory):
    """A workflow of 1 MB run by 40 nodes would be 40 MB of copies: refused at the second, made
    only while they fit (the limit is 1.25 MB here)."""
    running = await server_factory(store="sqlite://:memory:", limits=Limits(max_message_bytes=1024 * 1024 * 5 // 4))
    client = client_for(running)
    big = {"type": "object", "description": "x" * (1024 * 1024 - 4096)}
    await create(client, workflow("big", {"id": "w", "wait": {"signal": "go", "schema": big}}))
    many = seq("root", *(sub(f"s{i}", "big") for i in range(40)))
    error = await refused(client, workflow("many", many))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(error) == {
        "workflow.root.sequence.children[1].subworkflow": "the subworkflows stored so far exceed the limit"
    }
    await client.channel.close()


def tagged(tag: str) -> Any:
    return step("t", "echo", f"{{'tag': '{tag}'}}")


async def test_an_upgrade_carries_a_fixed_workflow_through_every_level_that_runs_it(parking_server):
    """leaf v2 fixes leaf v1: mid (runs leaf) and app (runs mid, and other) get new versions
    running it, in one call; other is left as it is; a second call finds nothing to do."""
    running, client = parking_server
    sdk = SdkClient(running.address)
    await create(client, workflow("leaf", tagged("broken")))
    await create(client, workflow("other", tagged("other")))
    await create(client, workflow("mid", seq("m", sub("l", "leaf"))))
    await create(client, workflow("app", seq("a", sub("x", "other"), sub("y", "mid"))))
    await create(client, workflow("leaf", tagged("fixed")))
    await create(client, workflow("self", seq("s", sub("me", "leaf", version=1))))
    await create(client, workflow("self", seq("s", sub("me", "self", version=1))))  # runs its own v1

    preview = await sdk.upgrade_subworkflows(runs=["leaf"], dry_run=True)
    assert [
        (u.workflow_id, u.to_version, [(m.workflow_id, m.from_version, m.to_version) for m in u.moves]) for u in preview
    ] == [
        ("mid", 0, [("leaf", 1, 2)]),
        ("app", 0, [("mid", 1, 2)]),
    ]
    assert (await get(client, "app")).version == 1  # a dry run stores nothing

    done = await sdk.upgrade_subworkflows(runs=["leaf"])
    assert [(u.workflow_id, u.from_version, u.to_version, u.error) for u in done] == [
        ("mid", 1, 2, None),
        ("app", 1, 2, None),
    ]
    app = await get(client, "app")
    assert [c.subworkflow.version for c in app.root.sequence.children] == [1, 2]  # other kept at v1
    task = await wait_done(client, (await submit(client, "app")).task_id)
    assert result(task) == {"tag": "fixed"}
    assert await sdk.upgrade_subworkflows() == [] and await sdk.upgrade_subworkflows(["app"]) == []
    await sdk.close()


async def test_an_upgrade_the_server_refuses_is_reported_and_the_rest_go_on(parking_server):
    running, client = parking_server
    sdk = SdkClient(running.address)
    for name in ("kept", "gone"):
        await create(client, workflow(name, tagged("v1")))
    await create(client, workflow("stuck", seq("r", sub("a", "kept"), sub("b", "gone"))))
    await create(client, workflow("fine", seq("r", sub("a", "kept"))))
    await create(client, workflow("kept", tagged("v2")))
    await client.workflows.DeleteWorkflow(workflow_pb2.DeleteWorkflowRequest(workflow_id="gone"))

    upgrades = {u.workflow_id: u for u in await sdk.upgrade_subworkflows()}
    assert upgrades["fine"].to_version == 2 and upgrades["fine"].error is None
    stuck = upgrades["stuck"]
    assert stuck.to_version == 0 and stuck.error is not None and stuck.error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [(v.field, v.description) for v in stuck.error.violations] == [
        ("workflow.root.sequence.children[1].subworkflow.workflow_id", "workflow 'gone' version 1 was deleted")
    ]
    assert (await get(client, "stuck")).version == 1
    with pytest.raises(McpError, match="nowhere") as caught:
        await sdk.upgrade_subworkflows(["nowhere"])
    assert caught.value.reason == "WORKFLOW_NOT_FOUND"
    await sdk.close()


async def test_a_next_state_directive_stays_inside_the_subworkflow(parking_server):
    """A state whose node is a subworkflow ending in a step that names `c` as the next state: the
    enclosing state machine takes its own transition to `b` (the subworkflow is one node to it)."""
    _, client = parking_server
    await create(client, workflow("router", step("r", "goto", "{'next': 'c'}")))
    states = [
        {"name": "a", "node": sub("inner", "router"), "transitions": [{"to": "b"}]},
        {"name": "b", "terminal": True, "node": step("bee", "echo", "{'at': 'b'}")},
        {"name": "c", "terminal": True, "node": step("sea", "echo", "{'at': 'c'}")},
    ]
    await create(client, workflow("machine", {"id": "m", "adaptive": {"states": states}}))
    done = await wait_done(client, (await submit(client, "machine")).task_id)
    assert done.status == S.TASK_STATUS_COMPLETED and result(done) == {"at": "b"}
