"""Every task stays readable, whatever its size (state layout v2), on both stores: long runs,
large values by reference, step pages, ReadValue, and the bad input around them."""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, struct_pb2

from mcp_sdk.proto import protocol_pb2, task_pb2, workflow_pb2
from mcp_server.auth import hash_token
from mcp_server.settings import Limits
from tests.conftest import Client, client_for
from tests.helpers import create, error_reason, run, step, step_states, submit, violations, wait_done, workflow

pytestmark = pytest.mark.asyncio
COMPLETED, FAILED = task_pb2.TASK_STATUS_COMPLETED, task_pb2.TASK_STATUS_FAILED
FOUR_MB = 4 * 1024 * 1024


@pytest.fixture
async def api(server_factory, store_url) -> Client:
    running = await server_factory(store=store_url, limits=Limits(max_tasks_in_flight=50, max_workflow_nodes=2000))
    client = client_for(running)
    yield client
    await client.channel.close()


def chain(workflow_id: str, steps: int, protocol: str = "echo", expr: str = "") -> workflow_pb2.Workflow:
    return workflow(
        workflow_id, {"id": "root", "sequence": {"children": [step(f"s{i}", protocol, expr) for i in range(steps)]}}
    )


async def read_value(
    client: Client, task_id: str, step_path: str = "", field: int = 0
) -> tuple[bytes, list[task_pb2.ValueChunk]]:
    got = [
        c
        async for c in client.tasks.ReadValue(
            task_pb2.ReadValueRequest(task_id=task_id, step_path=step_path, field=field)
        )
    ]
    return b"".join(c.data for c in got), got


async def all_steps(client: Client, task_id: str, page_size: int = 0) -> list[task_pb2.StepState]:
    steps, token = [], ""
    while True:
        page = await client.tasks.ListTaskSteps(
            task_pb2.ListTaskStepsRequest(task_id=task_id, page_size=page_size, page_token=token)
        )
        steps += page.steps
        token = page.next_page_token
        if not token:
            return steps


async def test_a_thousand_step_sequence_completes_and_reads_back(api):
    task = await run(api, chain("thousand", 1000), {"n": 1}, timeout=120)
    assert task.status == COMPLETED and task.step_count == 1001  # the sequence and its 1,000 steps
    assert len(task.steps) + (1 if task.steps_next_page_token else 0) > 0
    steps = await all_steps(api, task.task_id, page_size=300)
    assert [s.path for s in steps] == ["root", *(f"root/s{i}" for i in range(1000))]
    assert all(s.status == task_pb2.STEP_STATUS_COMPLETED for s in steps)
    data, _ = await read_value(api, task.task_id)
    assert json_format.MessageToDict(struct_pb2.Value.FromString(data)) == {"n": 1}
    # all of it goes in one write: 1,001 step records, their values and thousands of events
    assert (await api.tasks.DeleteTask(task_pb2.DeleteTaskRequest(task_id=task.task_id))).deleted
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await all_steps(api, task.task_id)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_watch_that_starts_behind_a_log_of_thousands_of_events_reads_it_all(api):
    """A watch that starts after the task wrote more events than one read returns (a page of
    1,000) reads on page by page: it used to wait for live events past the first page forever."""
    await create(
        api,
        workflow(
            "wide", {"id": "m", "map": {"items": "input.items", "max_concurrency": 100, "body": step("e", "echo")}}
        ),
    )
    submitted = await submit(api, "wide", {"items": list(range(1200))})
    async with asyncio.timeout(120):  # nobody watches while it runs: no log is followed in memory
        while (
            task := (await api.tasks.GetTask(task_pb2.GetTaskRequest(task_id=submitted.task_id))).task
        ).status != COMPLETED:
            await asyncio.sleep(0.1)
    assert task.last_sequence > 2400
    every = list(range(1, task.last_sequence + 1))
    watched = [e async for e in api.tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=task.task_id))]
    assert [e.sequence for e in watched] == every
    batched = [
        e
        async for m in api.tasks.WatchTaskEvents(task_pb2.WatchTaskRequest(task_id=task.task_id, after_sequence=700))
        for e in m.events
    ]
    assert [e.sequence for e in batched] == every[700:] and batched[-1].type == task_pb2.TASK_EVENT_TYPE_COMPLETED


async def test_a_chain_of_large_outputs_is_stored_once_per_value_and_read_back_by_reference(api):
    payload = {"text": "é" * 50_000}  # 100 KB of UTF-8, above the 64 KB inline limit
    task = await run(api, chain("big-chain", 200, "stamp"), payload, timeout=120)
    assert task.status == COMPLETED
    assert task.result_ref.size_bytes > 100_000 and not task.HasField("result")
    assert task.input_ref.size_bytes > 100_000 and not task.input_data.fields  # the input too
    steps = await all_steps(api, task.task_id)
    assert len(steps) == 201
    last = steps[-1]
    assert last.output_ref.step_path == "root/s199" and last.output_ref.field == task_pb2.VALUE_FIELD_OUTPUT
    assert last.input_ref.sha256 == steps[-2].output_ref.sha256  # one stored copy, two references
    data, chunks = await read_value(api, task.task_id, "root/s199")
    assert hashlib.sha256(data).hexdigest() == last.output_ref.sha256 == chunks[0].sha256
    assert len(data) == last.output_ref.size_bytes == chunks[0].size_bytes
    value = json_format.MessageToDict(struct_pb2.Value.FromString(data))
    assert value["stamp"] == "root/s199" and value["text"] == payload["text"]
    given, _ = await read_value(api, task.task_id, field=task_pb2.VALUE_FIELD_INPUT)
    assert json_format.MessageToDict(struct_pb2.Value.FromString(given)) == payload


@pytest.mark.parametrize(("size", "inline"), [(65536, True), (65537, False)])
async def test_an_output_of_exactly_the_inline_limit_is_inline_and_one_byte_more_is_a_reference(api, size, inline):
    task = await run(api, workflow(f"edge-{size}", step("s", "sized", f"{{'bytes': {size}}}")))
    state = step_states(task)["s"]
    assert state.HasField("output") == inline and bool(state.output_ref.sha256) == (not inline)
    data, _ = await read_value(api, task.task_id, "s")
    assert len(data) == size
    if inline:  # the same value (its object's fields in any order: protobuf fixes none)
        assert struct_pb2.Value.FromString(data) == state.output
    else:
        assert state.output_ref.size_bytes == size and state.output_ref.sha256 == hashlib.sha256(data).hexdigest()


async def test_responses_stay_under_the_message_limit_and_the_rest_pages(api):
    # 120 steps whose input and output are 60 KB each: inline, 14 MB in all.
    task = await run(
        api, chain("wide", 120, "sized", "{'bytes': 60000, 'tag': string(input.n)}"), {"n": 1}, timeout=120
    )
    assert task.status == COMPLETED
    assert task.ByteSize() < FOUR_MB and task.steps_next_page_token
    shown = [s.path for s in task.steps]
    rest = await all_steps(api, task.task_id)
    assert [s.path for s in rest][: len(shown)] == shown and len(rest) == 121
    page = await api.tasks.ListTaskSteps(task_pb2.ListTaskStepsRequest(task_id=task.task_id, page_size=1000))
    assert page.ByteSize() < FOUR_MB and page.next_page_token and page.total_size == 121
    listed = await api.tasks.ListTasks(task_pb2.ListTasksRequest(view=task_pb2.TASK_VIEW_FULL))
    assert listed.ByteSize() < FOUR_MB and listed.tasks[0].steps_next_page_token
    basic = await api.tasks.ListTasks(task_pb2.ListTasksRequest())
    assert not basic.tasks[0].steps and basic.tasks[0].step_count == 121
    plain = await api.tasks.GetTask(task_pb2.GetTaskRequest(task_id=task.task_id, view=task_pb2.TASK_VIEW_BASIC))
    assert not plain.task.steps and plain.task.step_count == 121


async def test_a_value_past_the_maximum_fails_its_step_naming_the_limit_and_the_task_stays_readable(
    server_factory, store_url
):
    running = await server_factory(store=store_url, limits=Limits(max_value_bytes=1_000_000))
    client = client_for(running)
    task = await run(client, workflow("too-big", step("huge", "sized", "{'bytes': 1500000}")))
    assert task.status == FAILED
    state = step_states(task)["huge"]
    assert state.error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert "the output of step huge is 1500000 bytes; a value may hold at most 1000000" in state.error.message
    gathered = {
        "id": "all",
        "map": {"items": "[1, 2, 3]", "body": step("part", "sized", "{'bytes': 400000, 'tag': string(item)}")},
    }
    task = await run(client, workflow("too-big-together", gathered))
    assert task.status == FAILED and "the output of map all is" in task.error.message
    assert (await client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=task.task_id))).task.status == FAILED
    await client.channel.close()


async def test_a_plugin_input_larger_than_a_call_can_carry_fails_clearly(server_factory, store_url):
    running = await server_factory(store=store_url, limits=Limits(max_message_bytes=256 * 1024))
    client = client_for(running)
    gathered = {
        "id": "all",
        "map": {"items": "[1, 2, 3]", "body": step("part", "sized", "{'bytes': 100000, 'tag': string(item)}")},
    }
    wf = workflow(
        "too-wide",
        {"id": "root", "sequence": {"children": [gathered, step("next", "echo", retry={"max_attempts": 3})]}},
    )
    task = await run(client, wf)
    assert task.status == FAILED
    state = step_states(task)["root/next"]
    assert "the input of echo is" in state.error.message and "a plugin call carries at most" in state.error.message
    assert state.attempts == 0  # refused before sending, never retried
    await client.channel.close()


# ---- bad input ----------------------------------------------------------------------------
async def test_a_page_token_of_another_tasks_steps_is_invalid_argument(api):
    await create(api, chain("two-tasks", 3))
    first, second = await submit(api, "two-tasks"), await submit(api, "two-tasks")
    await wait_done(api, first.task_id)
    await wait_done(api, second.task_id)
    page = await api.tasks.ListTaskSteps(task_pb2.ListTaskStepsRequest(task_id=first.task_id, page_size=1))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.tasks.ListTaskSteps(
            task_pb2.ListTaskStepsRequest(task_id=second.task_id, page_token=page.next_page_token)
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "another task" in violations(err.value)["page_token"]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.tasks.ListTaskSteps(task_pb2.ListTaskStepsRequest(task_id=first.task_id, page_token="not-a-token!"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "page_token" in violations(err.value)


async def test_read_value_of_what_does_not_exist_is_not_found_with_details(api):
    task = await run(
        api,
        workflow(
            "missing-values",
            {
                "id": "root",
                "sequence": {"children": [step("ok", "echo"), step("boom", "fail", "{'code': 'INVALID_ARGUMENT'}")]},
            },
        ),
    )
    assert task.status == FAILED
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"step_path": "root/boom"}, "VALUE_NOT_FOUND", "field"),  # a failed step has no output
        ({"step_path": "root"}, "VALUE_NOT_FOUND", "field"),  # nor its sequence
        (
            {"step_path": "root", "field": task_pb2.VALUE_FIELD_INPUT},
            "VALUE_NOT_FOUND",
            "field",
        ),  # composites keep no input
        ({"step_path": "root/nope"}, "STEP_NOT_FOUND", "step_path"),  # no such path
        ({}, "VALUE_NOT_FOUND", "field"),  # a failed task has no result
    ]
    for request, reason, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await read_value(api, task.task_id, **request)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND, request
        assert error_reason(err.value) == reason, request
        assert field in violations(err.value), request
    data, _ = await read_value(api, task.task_id, "root/ok", task_pb2.VALUE_FIELD_INPUT)
    assert struct_pb2.Value.FromString(data).WhichOneof("kind") == "struct_value"


async def test_read_value_of_another_principals_task_is_not_found(server_factory, store_url, tmp_path):
    tokens = {"ann": "ann-token", "ben": "ben-token"}
    principals = [{"name": n, "token_sha256": hash_token(t), "roles": ["author"]} for n, t in tokens.items()]
    path = tmp_path / "principals.json"
    path.write_text(json.dumps({"principals": principals}))
    running = await server_factory(store=store_url, auth_file=str(path))
    client = client_for(running)
    ann = [("authorization", "Bearer ann-token")]
    ben = [("authorization", "Bearer ben-token")]
    await client.workflows.CreateWorkflow(
        workflow_pb2.CreateWorkflowRequest(workflow=workflow("private", step("s", "echo"))), metadata=ann
    )
    request = task_pb2.SubmitTaskRequest(workflow_id="private")
    request.input_data.update({"secret": "ann's"})
    task = (await client.tasks.SubmitTask(request, metadata=ann)).task
    async for _ in client.tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=task.task_id), metadata=ann):
        pass
    for call in (
        client.tasks.ReadValue(task_pb2.ReadValueRequest(task_id=task.task_id, step_path="s"), metadata=ben),
        client.tasks.ListTaskSteps(task_pb2.ListTaskStepsRequest(task_id=task.task_id), metadata=ben),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            if isinstance(call, grpc.aio.UnaryStreamCall):
                [c async for c in call]
            else:
                await call
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and error_reason(err.value) == "TASK_NOT_FOUND"
    mine = [
        c
        async for c in client.tasks.ReadValue(
            task_pb2.ReadValueRequest(task_id=task.task_id, step_path="s"), metadata=ann
        )
    ]
    assert json_format.MessageToDict(struct_pb2.Value.FromString(mine[0].data)) == {"secret": "ann's"}
    listed = await client.tasks.ListTasks(task_pb2.ListTasksRequest(owner="ann"), metadata=ben)
    assert list(listed.tasks) == []
    await client.channel.close()


async def test_a_supervisor_decision_larger_than_a_response_reads_back(server_factory, store_url):
    """A supervisor that accepts with an output near a plugin's message limit: its step state holds
    the decision whole, past what one ListTaskSteps response may carry. It was never sent: every
    page from it on came back empty with a token to the same place. Now the state is sent with
    the decision's output left out, named where to read it (the supervise node's output)."""
    client = client_for(await server_factory(store_url))
    children = [step(f"c{i}", "echo", "{'score': 0.95, 'b': input.blob + input.blob}") for i in range(4)]
    review = {
        "id": "review",
        "supervise": {"supervisor": "threshold_supervisor", "max_rounds": 1, "children": children},
    }
    root = {"id": "root", "sequence": {"children": [step("small", "echo", "{'k': 1}"), review]}}
    await create(client, workflow("big-decision", root))
    task = await wait_done(client, (await submit(client, "big-decision", {"blob": "x" * 516_400})).task_id)
    assert task.status == task_pb2.TASK_STATUS_COMPLETED
    steps: dict[str, task_pb2.StepState] = {}
    token = ""
    for _ in range(3):  # every page moves on (an empty page with a token back to itself was the bug)
        page = await client.tasks.ListTaskSteps(task_pb2.ListTaskStepsRequest(task_id=task.task_id, page_token=token))
        assert page.steps
        steps |= {s.path: s for s in page.steps}
        if not (token := page.next_page_token):
            break
    assert not token and len(steps) == task.step_count == 8
    supervisor = steps["root/review/supervisor"]
    assert supervisor.status == task_pb2.STEP_STATUS_COMPLETED and supervisor.ByteSize() < 64 * 1024
    decision = supervisor.directive.decision
    assert decision.verdict == protocol_pb2.VERDICT_ACCEPT
    left_out = json_format.MessageToDict(decision.output)
    assert left_out["read_as"] == "the output of step root/review" and left_out["left_out_bytes"] > 4_128_000
    data, _ = await read_value(client, task.task_id, "root/review", task_pb2.VALUE_FIELD_OUTPUT)
    accepted = json_format.MessageToDict(struct_pb2.Value.FromString(data))
    assert sorted(accepted["outputs"]) == ["c0", "c1", "c2", "c3"]
    assert all(o["b"] == "x" * 1_032_800 for o in accepted["outputs"].values())
