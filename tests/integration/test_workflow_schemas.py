"""Workflow input and output schemas, on both stores, against the testkit plugin process: a task's
input is checked when it is submitted (SubmitTask, RunTask, SubmitAndWatchTask, a schedule, a rerun
under another version) and a subworkflow's when its node runs, what is refused storing nothing; a
result is checked when the run ends (a task's, a subworkflow's), what is rejected failing it."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2

from mcp_sdk.proto import schedule_pb2, task_pb2
from mcp_sdk.values import struct_to_dict
from mcp_server.settings import Limits
from tests.conftest import client_for
from tests.helpers import create, error_reason, refused, result, step, submit, violations, wait_done, workflow

pytestmark = pytest.mark.asyncio
S = task_pb2.TaskStatus

SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["text"],
    "properties": {
        "text": {"type": "string", "minLength": 1, "description": "what to echo"},
        "times": {"type": "integer", "minimum": 1, "maximum": 3},
        "tone": {"enum": ["plain", "loud"]},
    },
    "additionalProperties": False,
}


def echoing(workflow_id: str, **extra: Any) -> Any:
    return workflow(workflow_id, step("say", "echo"), input_schema=SCHEMA, **extra)


@pytest.fixture
async def served(server_factory, store_url):
    running = await server_factory(store=store_url, limits=Limits(inline_value_bytes=256))
    client = client_for(running)
    yield client
    await client.channel.close()


async def listed(client: Any, workflow_id: str) -> list[task_pb2.Task]:
    reply = await client.tasks.ListTasks(task_pb2.ListTasksRequest(workflow_id=workflow_id, page_size=100))
    return list(reply.tasks)


async def test_input_the_schema_accepts_runs_and_what_it_rejects_is_refused_naming_each_field(served):
    client = served
    await create(client, echoing("greet"))
    done = await wait_done(client, (await submit(client, "greet", {"text": "hi", "times": 2})).task_id)
    assert done.status == S.TASK_STATUS_COMPLETED and result(done) == {"text": "hi", "times": 2}

    error = await refused(submit(client, "greet", {"text": "", "times": 9, "tone": "shouty", "extra": 1}))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error_reason(error) == "INPUT_REJECTED"
    found = violations(error)
    assert set(found) == {"input_data", "input_data.text", "input_data.times", "input_data.tone"}, found
    assert "extra" in found["input_data"]  # additionalProperties
    assert "9" in found["input_data.times"] and "shouty" in found["input_data.tone"]
    assert (
        "'text' is a required property"
        in violations(await refused(submit(client, "greet", {"times": 1})))["input_data"]
    )
    assert "greet" in error.details() and "version 1" in error.details()
    assert [t.status for t in await listed(client, "greet")] == [S.TASK_STATUS_COMPLETED]  # nothing stored


async def test_run_task_and_submit_and_watch_refuse_the_same_and_a_mended_retry_reuses_the_request_id(served):
    client = served
    await create(client, echoing("strict"))
    bad = task_pb2.SubmitTaskRequest(workflow_id="strict", request_id="one")
    bad.input_data.update({"text": 5})
    for call in (client.tasks.RunTask(bad), client.tasks.SubmitTask(bad)):
        error = await refused(call)
        assert error_reason(error) == "INPUT_REJECTED" and "input_data.text" in violations(error)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in client.tasks.SubmitAndWatchTask(bad):
            pass
    assert error_reason(caught.value) == "INPUT_REJECTED"
    assert await listed(client, "strict") == []

    good = task_pb2.SubmitTaskRequest(workflow_id="strict", request_id="one")
    good.input_data.update({"text": "five"})
    reply = await client.tasks.RunTask(good)  # the refused requests kept nothing under the id
    assert reply.created and reply.task.status == S.TASK_STATUS_COMPLETED


async def test_a_schema_that_is_not_one_or_whose_pattern_is_not_linear_is_refused_at_create(served):
    client = served
    for schema, expected in (
        ({"type": "objekt"}, "not a JSON Schema"),
        ({"type": "object", "properties": {"t": {"type": "string", "pattern": "^(a)\\1$"}}}, "linear time"),
        # a $ref the server could never resolve would refuse every input: refused now, naming it
        ({"$ref": "https://example.com/brief.json"}, "'https://example.com/brief.json' does not resolve"),
        ({"properties": {"t": {"$ref": "#/$defs/missing"}}}, "at /properties/t/$ref"),
    ):
        error = await refused(create(client, workflow("bad-schema", step("s", "echo"), input_schema=schema)))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert expected in violations(error)["workflow.input_schema"]


async def test_references_within_the_schema_and_refs_in_data_are_accepted(served):
    schema = {
        "$defs": {"word": {"type": "string", "minLength": 1}},
        "type": "object",
        "properties": {"text": {"$ref": "#/$defs/word"}, "kind": {"const": {"$ref": "not a reference"}}},
    }
    await create(served, workflow("refs", step("s", "echo"), input_schema=schema))
    assert error_reason(await refused(submit(served, "refs", {"text": ""}))) == "INPUT_REJECTED"
    done = await wait_done(served, (await submit(served, "refs", {"text": "ok"})).task_id)
    assert done.status == S.TASK_STATUS_COMPLETED


async def test_a_retried_submission_made_before_a_stricter_version_gets_its_task(served):
    """Idempotency by request_id holds across a new version whose schema the input no longer fits."""
    client = served
    await create(client, workflow("tightening", step("say", "echo")))
    first = await submit(client, "tightening", {"free": "form"}, request_id="once")
    await create(client, echoing("tightening"))
    again = task_pb2.SubmitTaskRequest(workflow_id="tightening", request_id="once")
    again.input_data.update({"free": "form"})
    reply = await client.tasks.SubmitTask(again)
    assert (reply.task.task_id, reply.created) == (first.task_id, False)
    another = task_pb2.SubmitTaskRequest(workflow_id="tightening", request_id="twice")
    another.input_data.update({"free": "form"})
    assert error_reason(await refused(client.tasks.SubmitTask(another))) == "INPUT_REJECTED"


async def test_each_version_checks_its_own_schema(served):
    client = served
    await create(client, workflow("evolving", step("say", "echo")))  # v1: any object
    await create(client, echoing("evolving"))  # v2
    assert error_reason(await refused(submit(client, "evolving", {"free": "form"}))) == "INPUT_REJECTED"
    old = await submit(client, "evolving", {"free": "form"}, workflow_version=1)
    assert (await wait_done(client, old.task_id)).status == S.TASK_STATUS_COMPLETED


async def test_a_rerun_under_a_version_whose_schema_rejects_the_input_is_refused(served):
    client = served
    await create(client, workflow("moving", step("say", "echo")))
    small = await wait_done(client, (await submit(client, "moving", {"free": "form"})).task_id)
    # above the server's inline limit (256 bytes here): the input is stored by reference and read back
    large = await wait_done(client, (await submit(client, "moving", {"free": "x" * 2000})).task_id)
    await create(client, echoing("moving"))  # v2 rejects both inputs

    for source in (small, large):
        again = task_pb2.RerunTaskRequest(task_id=source.task_id, workflow_version=2)
        error = await refused(client.tasks.RerunTask(again))
        assert error_reason(error) == "INPUT_REJECTED" and "input_data" in violations(error)
        same = await client.tasks.RerunTask(task_pb2.RerunTaskRequest(task_id=source.task_id))  # its own version
        assert (await wait_done(client, same.task.task_id)).status == S.TASK_STATUS_COMPLETED

    fitting = await wait_done(client, (await submit(client, "moving", {"text": "ok"}, workflow_version=1)).task_id)
    moved = await client.tasks.RerunTask(task_pb2.RerunTaskRequest(task_id=fitting.task_id, workflow_version=2))
    assert (await wait_done(client, moved.task.task_id)).status == S.TASK_STATUS_COMPLETED


async def test_a_schedule_whose_input_the_schema_rejects_is_refused_naming_the_field(served):
    client = served
    await create(client, echoing("nightly-echo"))
    schedule = schedule_pb2.Schedule(
        schedule_id="echo-every-hour",
        spec=schedule_pb2.ScheduleSpec(every=[duration_pb2.Duration(seconds=3600)]),
        action=task_pb2.SubmitTaskRequest(workflow_id="nightly-echo"),
    )
    schedule.action.input_data.update({"text": "hi", "times": 0})
    error = await refused(client.schedules.CreateSchedule(schedule_pb2.CreateScheduleRequest(schedule=schedule)))
    assert error_reason(error) == "BAD_SCHEDULE"
    assert "0" in violations(error)["schedule.action.input_data.times"]
    schedule.action.input_data.update({"times": 1})
    created = await client.schedules.CreateSchedule(schedule_pb2.CreateScheduleRequest(schedule=schedule))
    assert created.schedule_id == "echo-every-hour"
    schedule.action.input_data.update({"tone": "shouty"})
    update = schedule_pb2.UpdateScheduleRequest(
        schedule=schedule, update_mask=field_mask_pb2.FieldMask(paths=["action"])
    )
    error = await refused(client.schedules.UpdateSchedule(update))
    assert "shouty" in violations(error)["schedule.action.input_data.tone"]


async def test_a_subworkflow_given_input_its_schema_rejects_fails_naming_the_node_and_the_field(served):
    client = served
    await create(client, echoing("child-echo"))
    inner = {"id": "inner", "subworkflow": {"workflow_id": "child-echo", "input": "{'text': input.t}"}}
    parent = workflow("parent-echo", {"id": "root", "sequence": {"children": [inner]}})
    await create(client, parent)
    good = await wait_done(client, (await submit(client, "parent-echo", {"t": "fine"})).task_id)
    assert good.status == S.TASK_STATUS_COMPLETED and result(good) == {"text": "fine"}

    bad = await wait_done(client, (await submit(client, "parent-echo", {"t": 7})).task_id)
    assert bad.status == S.TASK_STATUS_FAILED
    assert bad.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "inner" in bad.error.message and "input.text" in bad.error.message and "child-echo" in bad.error.message
    assert not any(s.path.endswith("/say") for s in bad.steps)  # the child's step never ran


async def test_a_check_that_would_take_exponential_time_is_refused_within_its_step_bound(served):
    """Two `anyOf` branches that both recurse (tests/security/test_schema_patterns.py): the check
    stops after its step bound, in a worker thread, while the server answers other calls."""
    client = served
    branch = {"type": "object", "properties": {"a": {"$ref": "#"}}}
    schema = {"anyOf": [{**branch, "required": ["a"]}, {**branch, "required": ["b"]}]}
    await create(client, workflow("costly", step("s", "echo"), input_schema=schema))
    deep: Any = 1
    for _ in range(29):
        deep = {"a": deep}
    submitted = asyncio.ensure_future(submit(client, "costly", deep))
    await asyncio.sleep(0.1)  # the check has begun
    assert await asyncio.wait_for(listed(client, "costly"), 10) == [] and not submitted.done()
    error = await refused(submitted)
    assert error_reason(error) == "INPUT_REJECTED", error.details()
    assert "takes more than 100,000 steps" in violations(error)["input_data"]
    fine = await submit(client, "costly", {"a": {"a": {"b": 1}}})
    assert (await wait_done(client, fine.task_id)).status == S.TASK_STATUS_COMPLETED


def clamping(workflow_id: str, clamp: str) -> Any:
    """`a` passes the input on; `b` gives {'n': ...} through `clamp`; the result must be n <= 5."""
    children = [step("a", "echo"), step("b", "echo", clamp)]
    limit = {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer", "maximum": 5}}}
    return workflow(workflow_id, {"id": "root", "sequence": {"children": children}}, output_schema=limit)


async def test_a_result_the_output_schema_rejects_fails_the_task_and_a_rerun_on_a_mended_version_completes(served):
    client = served
    await create(client, clamping("bounded", "{'n': prev.n}"))
    fits = await wait_done(client, (await submit(client, "bounded", {"n": 3})).task_id)
    assert fits.status == S.TASK_STATUS_COMPLETED and result(fits) == {"n": 3}

    failed = await wait_done(client, (await submit(client, "bounded", {"n": 9})).task_id)
    assert failed.status == S.TASK_STATUS_FAILED
    assert failed.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "output schema of workflow 'bounded' version 1" in failed.error.message
    assert "result.n: 9 is greater than the maximum of 5" in failed.error.message
    assert not failed.HasField("result")
    assert {s.path: s.status for s in failed.steps} == {
        p: task_pb2.STEP_STATUS_COMPLETED for p in ("root", "root/a", "root/b")
    }  # every step ran; the result is what was refused

    await create(client, clamping("bounded", "{'n': prev.n > 5 ? 5 : prev.n}"))  # v2 mends step b
    again = task_pb2.RerunTaskRequest(task_id=failed.task_id, from_step_path="root/b", workflow_version=2)
    rerun = await wait_done(client, (await client.tasks.RerunTask(again)).task.task_id)
    assert rerun.status == S.TASK_STATUS_COMPLETED and result(rerun) == {"n": 5}


async def test_a_subworkflow_whose_result_its_schema_rejects_fails_its_node(served):
    client = served
    await create(client, clamping("inner-bounded", "{'n': prev.n}"))
    node = {"id": "inner", "subworkflow": {"workflow_id": "inner-bounded"}}
    await create(client, workflow("outer", {"id": "root", "sequence": {"children": [node, step("after", "echo")]}}))
    done = await wait_done(client, (await submit(client, "outer", {"n": 7})).task_id)
    assert done.status == S.TASK_STATUS_FAILED
    assert "node inner: its result does not fit" in done.error.message and "result.n" in done.error.message
    assert not any(s.path == "root/after" for s in done.steps)
    ok = await wait_done(client, (await submit(client, "outer", {"n": 1})).task_id)
    assert ok.status == S.TASK_STATUS_COMPLETED and result(ok) == {"n": 1}


async def test_an_output_schema_that_is_not_one_is_refused_at_create(served):
    error = await refused(create(served, workflow("bad-out", step("s", "echo"), output_schema={"type": 5})))
    assert "not a JSON Schema" in violations(error)["workflow.output_schema"]


DEFAULTING: dict[str, Any] = {
    "type": "object",
    "required": ["text"],
    "properties": {
        "text": {"type": "string"},
        "times": {"type": "integer", "minimum": 1, "default": 2},
        "style": {"type": "object", "default": {}, "properties": {"loud": {"type": "boolean", "default": False}}},
    },
}


async def test_a_workflow_that_fills_defaults_stores_and_reads_its_input_with_them(served):
    client = served
    # CEL reads input.times and input.style.loud with no has(): the defaults are there
    says = step("say", "echo", "{'text': input.text, 'times': input.times, 'loud': input.style.loud}")
    await create(client, workflow("filled", says, input_schema=DEFAULTING, fill_input_defaults=True))
    task = await wait_done(client, (await submit(client, "filled", {"text": "hi"}, request_id="fill-1")).task_id)
    assert result(task) == {"text": "hi", "times": 2, "loud": False}
    assert struct_to_dict(task.input_data) == {"text": "hi", "times": 2, "style": {"loud": False}}
    again = await submit(client, "filled", {"text": "hi"}, request_id="fill-1")  # the request as sent is the retry
    assert again.task_id == task.task_id
    given = await wait_done(client, (await submit(client, "filled", {"text": "hi", "times": 3})).task_id)
    assert result(given)["times"] == 3

    await create(client, workflow("unfilled", says, input_schema=DEFAULTING))  # without the flag: as given
    bare = await wait_done(client, (await submit(client, "unfilled", {"text": "hi"})).task_id)
    assert bare.status == S.TASK_STATUS_FAILED and "times" in bare.error.message


async def test_a_default_the_schema_rejects_is_refused_and_the_flag_needs_a_schema(served):
    client = served
    wrong = {"type": "object", "properties": {"times": {"type": "integer", "default": "two"}}}
    await create(client, workflow("wrong", step("say", "echo"), input_schema=wrong, fill_input_defaults=True))
    error = await refused(submit(client, "wrong", {}))
    assert error_reason(error) == "INPUT_REJECTED" and "input_data.times" in violations(error)
    error = await refused(create(client, workflow("flagged", step("say", "echo"), fill_input_defaults=True)))
    assert "needs an input_schema" in violations(error)["workflow.fill_input_defaults"]


async def test_a_subworkflow_that_fills_defaults_gets_them_from_its_parent_s_input(served):
    client = served
    inner = step("say", "echo", "{'times': input.times, 'loud': input.style.loud}")
    await create(client, workflow("child", inner, input_schema=DEFAULTING, fill_input_defaults=True))
    parent = {"id": "sub", "subworkflow": {"workflow_id": "child", "input": "{'text': input.text}"}}
    await create(client, workflow("parent", parent))
    task = await wait_done(client, (await submit(client, "parent", {"text": "hi"})).task_id)
    assert task.status == S.TASK_STATUS_COMPLETED, task.error
    assert result(task) == {"times": 2, "loud": False}


async def test_defaults_that_make_an_input_too_large_or_too_deep_are_refused_as_such(server_factory, store_url):
    running = await server_factory(store=store_url, limits=Limits(max_input_bytes=1000, max_value_depth=8))
    client = client_for(running)
    deep: Any = "bottom"
    for _ in range(10):
        deep = {"d": deep}
    schema = {
        "type": "object",
        "properties": {"big": {"type": "string", "default": "x" * 2000}, "deep": {"type": "object", "default": deep}},
    }
    await create(client, workflow("padded", step("say", "echo"), input_schema=schema, fill_input_defaults=True))
    error = await refused(submit(client, "padded", {"deep": {}}))  # the 2,000-byte default fills it past 1,000
    assert error_reason(error) == "INPUT_TOO_LARGE" and "input_data" in violations(error)
    error = await refused(submit(client, "padded", {"big": "small"}))  # the deep default nests it past 8
    assert error_reason(error) == "VALUE_TOO_DEEP"
    task = await wait_done(client, (await submit(client, "padded", {"big": "small", "deep": {}})).task_id)
    assert task.status == S.TASK_STATUS_COMPLETED  # given both, nothing is filled in
    await client.channel.close()
