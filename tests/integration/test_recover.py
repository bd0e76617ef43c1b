"""Recover nodes, on both stores, against the testkit plugin process: a body that fails hands its
input to the handler, whose CEL sees how it failed; what is not a failure (a cancel, the task's
timeout) is never recovered; a run that parks or resumes in the handler does not run the body
again; reruns go back to the step that failed."""

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
    seq,
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


def recover(node_id: str, body: dict[str, Any], handler: dict[str, Any], *codes: str) -> dict[str, Any]:
    return {"id": node_id, "recover": {"body": body, "handler": handler, "codes": list(codes)}}


def failing(node_id: str, code: str = "UNAVAILABLE") -> dict[str, Any]:
    return step(node_id, "fail", f"{{'code': '{code}', 'message': 'down for {node_id}'}}", retry=ONCE)


ANSWER_WITH_ERROR = "{'why': error.code, 'said': error.message, 'where': error.step_path, 'topic': input.topic}"


async def run_one(client: Any, workflow_id: str, root: dict[str, Any], data: dict[str, Any] | None = None, **extra):
    await create(client, workflow(workflow_id, root, **extra))
    return await wait_done(client, (await submit(client, workflow_id, data or {"topic": "tea"})).task_id)


async def test_a_body_that_completes_is_the_output_and_the_handler_never_runs(parking_server):
    _, client = parking_server
    done = await run_one(client, "fine", recover("r", step("a", "echo"), step("h", "echo", ANSWER_WITH_ERROR)))
    assert done.status == S.TASK_STATUS_COMPLETED and result(done) == {"topic": "tea"}
    assert list(step_states(done)) == ["r", "r/a"]


async def test_a_failed_body_hands_its_input_and_its_error_to_the_handler(parking_server, testkit):
    _, client = parking_server
    body = seq("draft", step("outline", "echo"), failing("write"), step("polish", "echo"))
    done = await run_one(client, "degrade", recover("r", body, step("h", "echo", ANSWER_WITH_ERROR)))

    assert done.status == S.TASK_STATUS_COMPLETED, done.error
    answer = result(done)
    assert (answer["why"], answer["where"], answer["topic"]) == ("UNAVAILABLE", "r/draft/write", "tea")
    assert "down for write" in answer["said"]
    states = step_states(done)
    assert states["r/draft/write"].status == task_pb2.STEP_STATUS_FAILED  # the record keeps what went wrong
    assert states["r/draft"].status == task_pb2.STEP_STATUS_FAILED
    assert "r/draft/polish" not in states
    assert states["r/h"].status == states["r"].status == task_pb2.STEP_STATUS_COMPLETED
    calls = (await plugin_stats(testkit))["calls"]
    assert calls[f"{done.task_id}/r/draft/write/fail"] == 1


async def test_a_failure_whose_code_is_not_listed_fails_the_node_as_it_came(parking_server):
    _, client = parking_server
    node = recover("r", failing("a", "INVALID_ARGUMENT"), step("h", "echo"), "UNAVAILABLE", "DEADLINE_EXCEEDED")
    done = await run_one(client, "picky", node)
    assert done.status == S.TASK_STATUS_FAILED
    assert done.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "down for a" in done.error.message
    assert "r/h" not in step_states(done)

    handler = step("h", "echo", "{'c': error.code}")
    listed = recover("r", failing("a", "RESOURCE_EXHAUSTED"), handler, "resource_exhausted")
    done = await run_one(client, "listed", listed)
    assert done.status == S.TASK_STATUS_COMPLETED and result(done) == {"c": "RESOURCE_EXHAUSTED"}


async def test_a_handler_that_fails_fails_the_node_with_its_own_error(parking_server):
    _, client = parking_server
    done = await run_one(client, "worse", recover("r", failing("a"), failing("h", "ABORTED")))
    assert done.status == S.TASK_STATUS_FAILED
    assert done.error.code == grpc.StatusCode.ABORTED.value[0] and "down for h" in done.error.message


async def test_with_rethrow_the_handler_runs_and_the_node_fails_with_the_body_s_error(parking_server, testkit):
    _, client = parking_server
    cleanup = step("cleanup", "echo", "{'undo': input.topic, 'after': error.step_path}")
    node = recover("r", failing("a", "RESOURCE_EXHAUSTED"), cleanup)
    node["recover"]["rethrow"] = True
    done = await run_one(client, "cleanup", seq("root", node, step("never", "echo")))
    assert done.status == S.TASK_STATUS_FAILED
    assert done.error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0] and "down for a" in done.error.message
    states = step_states(done)
    assert states["root/r/cleanup"].status == task_pb2.STEP_STATUS_COMPLETED
    assert states["root/r"].status == task_pb2.STEP_STATUS_FAILED and "root/never" not in states
    calls = (await plugin_stats(testkit))["calls"]
    assert calls[f"{done.task_id}/root/r/cleanup/echo"] == 1


async def test_a_step_s_own_timeout_is_recovered_but_the_task_s_is_not(parking_server, testkit):
    _, client = parking_server
    slow = step("slow", "sleep", "{'ms': 3000}", timeout="0.3s", retry=ONCE)
    done = await run_one(client, "step-budget", recover("r", slow, step("h", "echo", "{'c': error.code}")))
    assert done.status == S.TASK_STATUS_COMPLETED and result(done) == {"c": "DEADLINE_EXCEEDED"}

    slow = step("slow", "sleep", "{'ms': 3000}", retry=ONCE)
    node = recover("r", slow, step("h", "echo"))
    done = await run_one(client, "task-budget", node, defaults={"task_timeout": "0.5s"})
    assert done.status == S.TASK_STATUS_FAILED
    assert done.error.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    assert "r/h" not in step_states(done)


async def test_a_cancelled_task_is_not_recovered(parking_server, testkit):
    _, client = parking_server
    node = recover("r", step("slow", "sleep", "{'ms': 5000}"), step("h", "echo"))
    await create(client, workflow("cancelled", node))
    task = await submit(client, "cancelled")
    async with asyncio.timeout(10):
        async for event in client.tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=task.task_id)):
            if event.type == task_pb2.TASK_EVENT_TYPE_STEP_STARTED and event.step_path == "r/slow":
                break
    await client.tasks.CancelTask(task_pb2.CancelTaskRequest(task_id=task.task_id))
    done = await wait_done(client, task.task_id)
    assert done.status == S.TASK_STATUS_CANCELLED
    assert "r/h" not in step_states(done)


async def test_each_item_of_a_map_and_each_branch_recovers_on_its_own(parking_server):
    _, client = parking_server
    # item 2 divides by zero: a CEL runtime error fails that item's step, and only that item recovers
    each = recover("each", step("try", "echo", "{'v': item, 'inverse': 6 / (item - 2)}"),
                   step("h", "echo", "{'v': item, 'recovered': error.code}"))  # fmt: skip
    mapped = {"id": "m", "map": {"items": "[1, 2, 3]", "body": each}}
    branches = {"id": "p", "parallel": {"children": [mapped, step("side", "echo")], "fail_fast": True}}
    done = await run_one(client, "items", branches)
    assert done.status == S.TASK_STATUS_COMPLETED, done.error
    assert result(done)["m"] == [
        {"v": 1, "inverse": -6},
        {"v": 2, "recovered": "INVALID_ARGUMENT"},
        {"v": 3, "inverse": 6},
    ]
    assert step_states(done)["p/m/each[1]/try"].status == task_pb2.STEP_STATUS_FAILED


async def test_a_run_parked_in_the_handler_resumes_there_without_running_the_body_again(parking_server, testkit):
    running, client = parking_server
    handler = seq(
        "ask", {"id": "approve", "wait": {"signal": "approve", "prompt": "{'failed': error.step_path}"}},
        step("after", "echo", "{'approved': prev.ok, 'why': error.code}"),
    )  # fmt: skip
    await create(client, workflow("park", recover("r", failing("a"), handler)))
    task = await submit(client, "park")
    await parked(client, task.task_id, running)  # the run ended; its next life starts from the store
    signal = task_pb2.SignalTaskRequest(task_id=task.task_id, signal="approve")
    signal.payload.struct_value.update({"ok": True})
    reply = await client.tasks.SignalTask(signal)
    assert reply.step_path == "r/ask/approve"
    done = await wait_done(client, task.task_id)
    assert done.status == S.TASK_STATUS_COMPLETED and result(done) == {"approved": True, "why": "UNAVAILABLE"}
    calls = (await plugin_stats(testkit))["calls"]
    assert calls[f"{task.task_id}/r/a/fail"] == 1
    prompt = step_states(done)["r/ask/approve"].input
    assert prompt.struct_value.fields["failed"].string_value == "r/a"


async def test_a_rerun_goes_back_to_the_step_the_handler_stood_in_for(parking_server, testkit):
    _, client = parking_server
    body = seq("b", step("first", "echo", "{'t': input.topic}"), failing("second"))
    done = await run_one(client, "again", recover("r", body, step("h", "echo", "{'fallback': true}")))
    assert done.status == S.TASK_STATUS_COMPLETED and result(done) == {"fallback": True}

    # the mended version: the body's second step works now; its first step is kept, not called again
    mended = recover("r", seq("b", step("first", "echo", "{'t': input.topic}"), step("second", "echo")),
                     step("h", "echo", "{'fallback': true}"))  # fmt: skip
    version = (await create(client, workflow("again", mended))).version
    # the task completed, so a rerun starts from its first step unless told where: here, the step that failed
    rerun = task_pb2.RerunTaskRequest(task_id=done.task_id, workflow_version=version, from_step_path="r/b/second")
    reply = await client.tasks.RerunTask(rerun)
    again = await wait_done(client, reply.task.task_id)
    assert again.status == S.TASK_STATUS_COMPLETED and result(again) == {"t": "tea"}
    states = step_states(again)
    assert [p for p, s in states.items() if s.reused] == ["r/b/first"] and "r/h" not in states


async def test_a_malformed_recover_node_is_refused_naming_each_field(parking_server):
    _, client = parking_server
    bad = {"id": "r", "recover": {"body": step("a", "echo", "{'x': error.code}"), "codes": ["NOPE", "OK"]}}
    after = step("z", "echo", "{'x': error}")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await create(client, workflow("bad", seq("root", bad, after)))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    found = violations(caught.value)
    assert "unknown variable 'error'" in found["workflow.root.sequence.children[0].recover.body.step.input"]
    assert "unknown variable 'error'" in found["workflow.root.sequence.children[1].step.input"]
    assert "not the name of a gRPC error code" in found["workflow.root.sequence.children[0].recover.codes[0]"]
    assert "not the name of a gRPC error code" in found["workflow.root.sequence.children[0].recover.codes[1]"]
    assert found["workflow.root.sequence.children[0].recover.handler"] == "a recover node needs a handler"
