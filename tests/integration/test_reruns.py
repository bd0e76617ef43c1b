"""Reruns, on both stores, against the testkit plugin process: a new task from a finished one
keeps the steps that completed before the chosen step (calling nothing for them) and runs the
rest afresh, with an edited input or on a fixed workflow version."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, struct_pb2

from mcp_sdk.proto import task_pb2
from mcp_server.settings import Limits
from tests.conftest import client_for
from tests.helpers import (
    create,
    error_reason,
    events,
    plugin_stats,
    result,
    run,
    seq,
    step,
    step_states,
    submit,
    violations,
    wait_done,
    workflow,
)

pytestmark = pytest.mark.asyncio
E = task_pb2.TaskEventType
S = task_pb2.TaskStatus
INLINE = 1024  # values above this are stored apart, and a rerun shares them by reference


def value(data: Any) -> struct_pb2.Value:
    return json_format.ParseDict(data, struct_pb2.Value())


def four_appends(workflow_id: str = "four") -> Any:
    return workflow(workflow_id, seq("root", *(step(f"s{i}", "append") for i in range(1, 5))))


async def full(client: Any, task_id: str) -> task_pb2.Task:
    return (await client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=task_id))).task


async def rerun(client: Any, task_id: str, **fields: Any) -> task_pb2.Task:
    reply = await client.tasks.RerunTask(task_pb2.RerunTaskRequest(task_id=task_id, **fields))
    return await wait_done(client, reply.task.task_id)


async def calls_of(testkit: Any, task_id: str) -> dict[str, int]:
    """The plugin's calls for one task, by step path."""
    calls = (await plugin_stats(testkit))["calls"]
    return {key.split("/", 1)[1].rsplit("/", 1)[0]: n for key, n in calls.items() if key.startswith(task_id + "/")}


def output(state: task_pb2.StepState) -> Any:
    return json_format.MessageToDict(state.output)


@pytest.fixture
async def served(server_factory, store_url):
    running = await server_factory(store=store_url, limits=Limits(inline_value_bytes=INLINE))
    client = client_for(running)
    yield running, client
    await client.channel.close()


async def test_a_rerun_from_the_third_of_four_steps_calls_only_the_last_two(served, testkit):
    _, client = served
    await create(client, four_appends())
    original = await wait_done(client, (await submit(client, "four", {"text": ">"})).task_id)
    assert original.status == S.TASK_STATUS_COMPLETED

    again = await rerun(client, original.task_id, from_step_path="root/s3")

    assert again.status == S.TASK_STATUS_COMPLETED and again.task_id != original.task_id
    assert again.rerun_of == original.task_id and again.rerun_from_step_path == "root/s3"
    assert await calls_of(testkit, again.task_id) == {"root/s3": 1, "root/s4": 1}
    listed = (await full(client, again.task_id)).steps
    assert [s.path for s in listed] == ["root", *(f"root/s{i}" for i in range(1, 5))]  # the original's order
    before, after = step_states(original), {s.path: s for s in listed}
    for path in ("root/s1", "root/s2"):
        assert after[path].reused and output(after[path]) == output(before[path])
    assert not any(after[p].reused for p in ("root", "root/s3", "root/s4"))
    assert result(again) == result(original) == {"text": ">s1s2s3s4", "trail": [f"root/s{i}" for i in range(1, 5)]}
    queued = (await events(client, again.task_id))[0]
    assert queued.type == E.TASK_EVENT_TYPE_QUEUED
    assert json_format.MessageToDict(queued.data) == {
        "rerun_of": original.task_id,
        "from_step_path": "root/s3",
        "kept_steps": 2,
    }
    now = await full(client, original.task_id)
    assert list(now.reruns) == [again.task_id]  # listed among its reruns, and otherwise never changed
    now.ClearField("reruns")
    assert now == original


async def test_an_edited_input_is_what_the_chosen_step_receives(served, testkit):
    _, client = served
    await create(client, four_appends("edited"))
    original = await wait_done(client, (await submit(client, "edited", {"text": ">"})).task_id)

    edited = {"text": "fixed:", "suffix": "!"}
    again = await rerun(client, original.task_id, from_step_path="root/s3", input=value(edited))

    states = step_states(await full(client, again.task_id))
    assert json_format.MessageToDict(states["root/s3"].input) == edited
    assert result(again)["text"] == "fixed:!s4"
    assert again.rerun_input == value(edited)
    assert await calls_of(testkit, again.task_id) == {"root/s3": 1, "root/s4": 1}


async def test_a_failed_task_is_redriven_on_a_fixed_version(served, testkit):
    _, client = served
    broken = seq("root", step("s1", "append"), step("s2", "fail", "{'code': 'INVALID_ARGUMENT'}"), step("s3", "append"))
    await create(client, workflow("redrive", broken))
    failed = await wait_done(client, (await submit(client, "redrive", {"text": ">"})).task_id)
    assert failed.status == S.TASK_STATUS_FAILED
    fixed = seq("root", step("s1", "append"), step("s2", "append"), step("s3", "append"))
    version = (await create(client, workflow("redrive", fixed))).version

    again = await rerun(client, failed.task_id, workflow_version=version)

    assert again.status == S.TASK_STATUS_COMPLETED
    assert again.rerun_from_step_path == "root/s2" and again.workflow_version == version
    assert await calls_of(testkit, again.task_id) == {"root/s2": 1, "root/s3": 1}  # s1 completed before: kept
    assert result(again)["text"] == ">s1s2s3"


async def test_a_version_that_lacks_a_kept_step_is_refused_naming_it(served):
    _, client = served
    await create(client, four_appends("moved"))
    original = await wait_done(client, (await submit(client, "moved")).task_id)
    renamed = seq("root", step("t1", "append"), *(step(f"s{i}", "append") for i in range(2, 5)))
    other_protocol = seq("root", step("s1", "echo"), *(step(f"s{i}", "append") for i in range(2, 5)))
    for root, expected in ((renamed, "no node at this path"), (other_protocol, "it calls 'echo'")):
        version = (await create(client, workflow("moved", root))).version
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.tasks.RerunTask(
                task_pb2.RerunTaskRequest(task_id=original.task_id, from_step_path="root/s3", workflow_version=version)
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error_reason(err.value) == "RERUN_STEP_MISSING"
        described = violations(err.value)["workflow_version"]
        assert described.startswith("step root/s1:") and expected in described
    # a version that changes only what comes after the cut is fine
    later = seq("root", *(step(f"s{i}", "append") for i in range(1, 4)), step("s4", "echo"))
    version = (await create(client, workflow("moved", later))).version
    again = await rerun(client, original.task_id, from_step_path="root/s4", workflow_version=version)
    assert again.status == S.TASK_STATUS_COMPLETED and result(again)["text"] == "s1s2s3"


async def test_one_branch_of_a_parallel_reruns_and_the_other_stays_kept(served, testkit):
    _, client = served
    branches = {
        "id": "par",
        "parallel": {
            "children": [seq("a", step("a1", "append"), step("a2", "append")), seq("b", step("b1", "append"))]
        },
    }
    await create(client, workflow("branches", seq("root", step("prep", "append"), branches, step("end", "echo"))))
    original = await wait_done(client, (await submit(client, "branches", {"text": ">"})).task_id)
    order = [s.path for s in original.steps]
    # the branch that started last is the one to rerun: the other started before it, so it is kept
    chosen, other = (
        ("root/par/b", "root/par/a")
        if order.index("root/par/b") > order.index("root/par/a")
        else (
            "root/par/a",
            "root/par/b",
        )
    )

    again = await rerun(client, original.task_id, from_step_path=chosen)

    calls = await calls_of(testkit, again.task_id)
    assert not any(path.startswith(other) or path == "root/prep" for path in calls)  # kept: not called
    assert {path for path in calls if path.startswith(chosen)} == {p for p in order if p.startswith(chosen + "/")}
    states = step_states(await full(client, again.task_id))
    assert all(states[p].reused for p in order if p.startswith(other) or p == "root/prep")
    assert result(again) == result(original)


async def test_a_rerun_from_inside_a_map_keeps_the_items_that_ran_before(served, testkit):
    _, client = served
    mapped = {"id": "m", "map": {"items": "[1, 2, 3]", "body": step("c", "counter", "{'n': item}")}}
    await create(client, workflow("mapped", seq("root", mapped, step("end", "echo", "{'all': prev}"))))
    original = await wait_done(client, (await submit(client, "mapped")).task_id)
    order = [s.path for s in original.steps]
    chosen = max(("root/m/c[0]", "root/m/c[1]", "root/m/c[2]"), key=order.index)  # the item that started last

    again = await rerun(client, original.task_id, from_step_path=chosen, input=value({"n": 10}))

    assert await calls_of(testkit, again.task_id) == {chosen: 1, "root/end": 1}
    expected = [{"n": item + 1} for item in (1, 2, 3)]
    expected[int(chosen[-2])] = {"n": 11}
    assert result(again) == {"all": expected}


async def test_a_rerun_from_inside_an_adaptive_loop_replays_the_rounds_before(served, testkit):
    _, client = served
    states = [
        {
            "name": "count",
            "node": step("inc", "counter"),
            "transitions": [{"when": "output.n < 3", "to": "count"}, {"to": "done"}],
        },
        {"name": "done", "terminal": True, "node": step("fin", "echo")},
    ]
    await create(client, workflow("looped", {"id": "m", "adaptive": {"states": states, "max_transitions": 10}}))
    original = await wait_done(client, (await submit(client, "looped", {"n": 0})).task_id)
    assert result(original) == {"n": 3}

    again = await rerun(client, original.task_id, from_step_path="m/inc#2", input=value({"n": 0}))

    assert result(again) == {"n": 3}
    assert await calls_of(testkit, again.task_id) == {"m/inc#2": 1, "m/inc#3": 1, "m/inc#4": 1, "m/fin": 1}
    assert step_states(await full(client, again.task_id))["m/inc"].reused


async def test_a_rerun_of_a_rerun_shares_large_values_with_the_first_task(served, testkit):
    _, client = served
    wf = seq("root", step("big", "sized", "{'bytes': 5000, 'tag': 'b'}"), step("copy", "echo"), step("last", "echo"))
    await create(client, workflow("large", wf))
    original = await wait_done(client, (await submit(client, "large")).task_id)
    first = await rerun(client, original.task_id, from_step_path="root/last")
    second = await rerun(client, first.task_id, from_step_path="root/last")

    assert second.rerun_of == first.task_id
    assert await calls_of(testkit, second.task_id) == {"root/last": 1}
    for task in (first, second):
        states = step_states(await full(client, task.task_id))
        assert states["root/big"].reused and states["root/big"].output_ref.size_bytes == 5000
        data = b"".join(
            [
                chunk.data
                async for chunk in client.tasks.ReadValue(
                    task_pb2.ReadValueRequest(task_id=task.task_id, step_path="root/big")
                )
            ]
        )
        assert json_format.MessageToDict(struct_pb2.Value.FromString(data))["tag"] == "b"
        assert task.result_ref.sha256 == original.result_ref.sha256


async def test_waits_after_the_cut_are_asked_again_and_those_before_are_kept(served):
    _, client = served
    wf = seq(
        "root",
        step("draft", "append"),
        {"id": "review", "wait": {"signal": "approval"}},
        step("publish", "echo", "{'approved': prev.ok}"),
    )
    await create(client, workflow("reviewed", wf))
    task = await submit(client, "reviewed", {"text": ">"})
    await client.tasks.SignalTask(
        task_pb2.SignalTaskRequest(task_id=task.task_id, signal="approval", payload=value({"ok": True}))
    )
    original = await wait_done(client, task.task_id)
    assert result(original) == {"approved": True}

    redraft = (
        await client.tasks.RerunTask(task_pb2.RerunTaskRequest(task_id=original.task_id, from_step_path="root/draft"))
    ).task
    async with asyncio.timeout(10):
        while (await full(client, redraft.task_id)).status != S.TASK_STATUS_WAITING:
            await asyncio.sleep(0.05)
    await client.tasks.SignalTask(
        task_pb2.SignalTaskRequest(task_id=redraft.task_id, signal="approval", payload=value({"ok": False}))
    )
    assert result(await wait_done(client, redraft.task_id)) == {"approved": False}

    republish = await rerun(client, original.task_id, from_step_path="root/publish")  # the approval is kept
    assert result(republish) == {"approved": True}
    assert step_states(await full(client, republish.task_id))["root/review"].reused


async def test_an_empty_path_reruns_a_completed_task_from_the_start(served, testkit):
    _, client = served
    await create(client, four_appends("whole"))
    original = await wait_done(client, (await submit(client, "whole")).task_id)
    again = await rerun(client, original.task_id)
    assert again.rerun_from_step_path == "root"
    assert await calls_of(testkit, again.task_id) == {f"root/s{i}": 1 for i in range(1, 5)}
    assert not any(s.reused for s in (await full(client, again.task_id)).steps)


async def test_a_task_still_running_is_refused(served):
    _, client = served
    await create(client, workflow("slow", seq("root", step("nap", "sleep", "{'ms': 3000}"))))
    task = await submit(client, "slow")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.tasks.RerunTask(task_pb2.RerunTaskRequest(task_id=task.task_id))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(err.value) == "TASK_NOT_FINISHED" and "task_id" in violations(err.value)
    await client.tasks.CancelTask(task_pb2.CancelTaskRequest(task_id=task.task_id, reason="done"))


async def test_bad_requests_are_refused_with_the_field_and_why(served):
    _, client = served
    await create(client, four_appends("bad"))
    original = await wait_done(client, (await submit(client, "bad")).task_id)
    cases = [
        (task_pb2.RerunTaskRequest(task_id="nope"), grpc.StatusCode.NOT_FOUND, None),
        (
            task_pb2.RerunTaskRequest(task_id=original.task_id, input=value({})),
            grpc.StatusCode.INVALID_ARGUMENT,
            "input",
        ),
        (
            task_pb2.RerunTaskRequest(task_id=original.task_id, from_step_path="root/s9"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "from_step_path",
        ),
        (
            task_pb2.RerunTaskRequest(task_id=original.task_id, from_step_path="root/s2", input=value("text")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "input",
        ),
        (
            task_pb2.RerunTaskRequest(task_id=original.task_id, workflow_version=99),
            grpc.StatusCode.NOT_FOUND,
            None,
        ),
    ]
    for request, code, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.tasks.RerunTask(request)
        assert err.value.code() == code, request
        if field:
            assert field in violations(err.value), (request, violations(err.value))


async def test_a_request_id_makes_one_rerun(served):
    _, client = served
    await create(client, four_appends("once"))
    original = await wait_done(client, (await submit(client, "once", request_id="same")).task_id)
    request = task_pb2.RerunTaskRequest(task_id=original.task_id, from_step_path="root/s2", request_id="same")
    first = await client.tasks.RerunTask(request)
    again = await client.tasks.RerunTask(request)
    assert first.created and not again.created and first.task.task_id == again.task.task_id
    assert first.task.task_id != original.task_id  # a submission's request_id is apart from a rerun's
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.tasks.RerunTask(
            task_pb2.RerunTaskRequest(task_id=original.task_id, from_step_path="root/s3", request_id="same")
        )
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    other = await wait_done(client, (await submit(client, "once")).task_id)
    with pytest.raises(grpc.aio.AioRpcError) as err:  # the same request_id for a rerun of another task
        await client.tasks.RerunTask(task_pb2.RerunTaskRequest(task_id=other.task_id, request_id="same"))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    await wait_done(client, first.task.task_id)


async def test_a_step_after_a_kept_composite_reads_the_steps_inside_it(served):
    """`steps.a` names a step inside a parallel that finished before the cut: a rerun keeps the
    parallel without running it, and the step after it must still see what `a` gave."""
    inner = {"id": "both", "parallel": {"children": [step("a", "echo", "{'text': 'from a'}"), step("b", "echo")]}}
    after = step("c", "echo", "{'a': steps.a.text, 'both': size(steps.both)}")
    _, client = served
    original = await run(client, workflow("kept-inside", seq("root", inner, after)), {"x": 1})
    assert original.status == task_pb2.TASK_STATUS_COMPLETED
    again = await rerun(client, original.task_id, from_step_path="root/c")
    assert again.status == task_pb2.TASK_STATUS_COMPLETED, again.error
    assert result(again) == {"a": "from a", "both": 2}
