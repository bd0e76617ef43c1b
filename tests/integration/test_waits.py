"""Waits and sleeps, on both stores: a branch pauses for a signal or a time, the task holds no
run slot while all of it waits, and each signal reaches one step, once."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from typing import Any

import grpc
import pytest
import redis
from google.protobuf import json_format, struct_pb2

from mcp_sdk.proto import task_pb2
from mcp_server.settings import Limits
from tests.conftest import client_for
from tests.helpers import (
    create,
    error_reason,
    events,
    parked,
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
E = task_pb2.TaskEventType
S = task_pb2.TaskStatus
APPROVAL_SCHEMA = {"type": "object", "required": ["approved"], "properties": {"approved": {"type": "boolean"}}}


def wait(node_id: str, signal: str, **options: Any) -> dict[str, Any]:
    return {"id": node_id, "wait": {"signal": signal, **options}}


def value(data: Any) -> struct_pb2.Value:
    return json_format.ParseDict(data, struct_pb2.Value())


async def signal(
    client: Any, task_id: str, name: str, payload: Any = None, **fields: Any
) -> task_pb2.SignalTaskResponse:
    request = task_pb2.SignalTaskRequest(task_id=task_id, signal=name, **fields)
    if payload is not None:
        request.payload.CopyFrom(value(payload))
    return await client.tasks.SignalTask(request)


async def until_status(client: Any, task_id: str, status: int, timeout: float = 10.0) -> task_pb2.Task:
    async with asyncio.timeout(timeout):
        while True:
            task = (await client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=task_id))).task
            if task.status == status:
                return task
            await asyncio.sleep(0.02)


async def test_a_person_approves_and_the_task_goes_on(served):
    _, client = served
    wf = seq(
        "root",
        step("draft", "echo", "{'text': input.topic + ' draft'}"),
        wait("review", "approval", prompt="{'draft': prev.text}", schema=APPROVAL_SCHEMA),
        step("publish", "echo", "{'published': prev.approved, 'text': steps.draft.text}"),
    )
    await create(client, workflow("approve", wf))
    task = await submit(client, "approve", {"topic": "tea"})
    waiting = await until_status(client, task.task_id, S.TASK_STATUS_WAITING)
    review = step_states(waiting)["root/review"]
    assert review.status == task_pb2.STEP_STATUS_WAITING and review.wait.signal == "approval"
    assert json_format.MessageToDict(review.input) == {"draft": "tea draft"}  # the prompt, stored as its input
    suspended = [e for e in await events_until(client, task.task_id, E.TASK_EVENT_TYPE_STEP_SUSPENDED)]
    assert suspended[-1].data["prompt"] == {"draft": "tea draft"} and suspended[-1].data["signal"] == "approval"
    reply = await signal(client, task.task_id, "approval", {"approved": True, "by": "ada"}, request_id="r1")
    assert reply.created and reply.step_path == "root/review" and reply.sequence > 0
    done = await wait_done(client, task.task_id)
    assert done.status == S.TASK_STATUS_COMPLETED and result(done) == {"published": True, "text": "tea draft"}
    received = [e for e in await events(client, task.task_id) if e.type == E.TASK_EVENT_TYPE_SIGNAL_RECEIVED]
    assert [(e.sequence, e.step_path, e.data["request_id"]) for e in received] == [
        (reply.sequence, "root/review", "r1")
    ]
    assert step_states(done)["root/review"].wait.received_sequence == reply.sequence


async def events_until(client: Any, task_id: str, kind: int, timeout: float = 10.0) -> list[task_pb2.TaskEvent]:
    """The task's events up to the first of `kind` (the watch is left then: the task may wait on)."""
    seen: list[task_pb2.TaskEvent] = []
    async with asyncio.timeout(timeout):
        async for event in client.tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=task_id)):
            seen.append(event)
            if event.type == kind:
                return seen
    raise AssertionError(f"no {task_pb2.TaskEventType.Name(kind)} event")


async def test_a_signal_sent_before_the_wait_is_kept_and_taken_by_it(served):
    _, client = served
    wf = seq("root", step("slow", "sleep", "{'ms': 600}"), wait("approve", "go"), step("after", "echo"))
    await create(client, workflow("early", wf))
    task = await submit(client, "early", {})
    await until_status(client, task.task_id, S.TASK_STATUS_RUNNING)
    reply = await signal(client, task.task_id, "go", {"early": True}, request_id="first")
    assert reply.created and reply.step_path == ""  # nobody waited yet: kept
    done = await wait_done(client, task.task_id)
    assert done.status == S.TASK_STATUS_COMPLETED and result(done) == {"early": True}
    assert not [e for e in await events(client, task.task_id) if e.type == E.TASK_EVENT_TYPE_STEP_SUSPENDED]


async def test_a_timeout_gives_the_default_or_fails_the_step(served):
    _, client = served
    with_default = wait("w", "answer", timeout="0.3s", on_timeout="{'answer': 'nobody answered', 'n': input.n}")
    without = wait("w2", "answer", timeout="0.3s")
    await create(client, workflow("defaulted", seq("root", with_default)))
    await create(client, workflow("strict", seq("root", without)))
    defaulted = await wait_done(client, (await submit(client, "defaulted", {"n": 7})).task_id)
    assert defaulted.status == S.TASK_STATUS_COMPLETED
    assert result(defaulted) == {"answer": "nobody answered", "n": 7}
    assert step_states(defaulted)["root/w"].wait.timed_out
    strict = await wait_done(client, (await submit(client, "strict", {})).task_id)
    assert strict.status == S.TASK_STATUS_FAILED and strict.error.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]


async def test_bad_signals_are_refused_and_deliver_nothing(served):
    _, client = served
    await create(client, workflow("guarded", seq("root", wait("review", "approval", schema=APPROVAL_SCHEMA))))
    task = await submit(client, "guarded", {})
    await until_status(client, task.task_id, S.TASK_STATUS_WAITING)
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await signal(client, task.task_id, "approvel", {"approved": True})
    assert unknown.value.code() == grpc.StatusCode.INVALID_ARGUMENT and error_reason(unknown.value) == "UNKNOWN_SIGNAL"
    with pytest.raises(grpc.aio.AioRpcError) as mismatch:
        await signal(client, task.task_id, "approval", {"approved": "yes", "note": 3})
    assert mismatch.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "payload.approved" in violations(mismatch.value)
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await signal(client, task.task_id, "approval", {})
    assert "payload" in violations(missing.value)
    with pytest.raises(grpc.aio.AioRpcError) as bad_name:
        await signal(client, task.task_id, "no spaces allowed", {"approved": True})
    assert "signal" in violations(bad_name.value)
    with pytest.raises(grpc.aio.AioRpcError) as not_waiting:
        await signal(client, task.task_id, "approval", {"approved": True}, step_path="root/elsewhere")
    assert not_waiting.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    still = await until_status(client, task.task_id, S.TASK_STATUS_WAITING)  # the step waits on
    assert step_states(still)["root/review"].status == task_pb2.STEP_STATUS_WAITING
    first = await signal(client, task.task_id, "approval", {"approved": False}, request_id="once")
    again = await signal(client, task.task_id, "approval", {"approved": True}, request_id="once")
    assert (
        first.created and not again.created and (again.sequence, again.step_path) == (first.sequence, first.step_path)
    )
    done = await wait_done(client, task.task_id)
    assert result(done) == {"approved": False}  # the repeat delivered nothing
    after = await signal(client, task.task_id, "approval", {"approved": True}, request_id="once")
    assert not after.created and after.sequence == first.sequence  # answered as the first, even now
    with pytest.raises(grpc.aio.AioRpcError) as finished:
        await signal(client, task.task_id, "approval", {"approved": True}, request_id="late")
    assert finished.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    received = [e for e in await events(client, task.task_id) if e.type == E.TASK_EVENT_TYPE_SIGNAL_RECEIVED]
    assert len(received) == 1


async def test_a_task_takes_at_most_its_limit_of_signals_and_a_repeat_is_still_answered(server_factory, store_url):
    """Every signal is stored with its task, so a client sending signals no wait takes could grow
    one task without bound: past MCP_LIMIT_MAX_SIGNALS_PER_TASK (5 here) SignalTask is refused
    RESOURCE_EXHAUSTED, TOO_MANY_SIGNALS, writing nothing; a repeated request_id is answered."""
    running = await server_factory(store=store_url, limits=Limits(max_signals_per_task=5))
    client = client_for(running)
    await create(client, workflow("capped", seq("root", wait("gate", "go"), wait("more", "more"))))
    task = await submit(client, "capped", {})
    await until_status(client, task.task_id, S.TASK_STATUS_WAITING)
    kept = [await signal(client, task.task_id, "more", {"n": i}, request_id=f"m{i}") for i in range(5)]
    assert all(k.created and not k.step_path for k in kept)  # kept for the wait after the gate
    with pytest.raises(grpc.aio.AioRpcError) as full:
        await signal(client, task.task_id, "go", {}, request_id="go")
    assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and error_reason(full.value) == "TOO_MANY_SIGNALS"
    again = await signal(client, task.task_id, "more", {"n": 2}, request_id="m2")
    assert not again.created and again.sequence == kept[2].sequence
    assert step_states(await get(client, task.task_id))["root/gate"].status == task_pb2.STEP_STATUS_WAITING
    await client.tasks.CancelTask(task_pb2.CancelTaskRequest(task_id=task.task_id, reason="enough"))
    received = [e for e in await events(client, task.task_id) if e.type == E.TASK_EVENT_TYPE_SIGNAL_RECEIVED]
    assert len(received) == 5  # the refused ones wrote nothing
    await client.channel.close()


async def sent_until_full_of_bytes(client: Any, task_id: str) -> list[task_pb2.SignalTaskResponse]:
    """Signals of ~3 KB kept for a later wait, on a task that may hold 10,000 bytes of them: three
    fit, the fourth is refused TOO_MANY_SIGNAL_BYTES and writes nothing, a small one still fits,
    and a repeated request_id is answered even then."""
    kept = [await signal(client, task_id, "more", {"text": "x" * 3000}, request_id=f"m{i}") for i in range(3)]
    assert all(k.created and not k.step_path for k in kept)
    with pytest.raises(grpc.aio.AioRpcError) as full:
        await signal(client, task_id, "more", {"text": "x" * 3000}, request_id="m3")
    assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_reason(full.value) == "TOO_MANY_SIGNAL_BYTES"
    assert "MCP_LIMIT_MAX_SIGNAL_BYTES_PER_TASK" in full.value.details()
    small = await signal(client, task_id, "more", {"n": 1}, request_id="small")
    again = await signal(client, task_id, "more", {"text": "x" * 3000}, request_id="m1")
    assert small.created and not again.created and again.sequence == kept[1].sequence
    return [*kept, small]


async def test_a_task_holds_at_most_its_limit_of_signal_bytes(server_factory, store_url):
    """Each signal may be 1 MB and a task may take 10,000: 10 GB in one task without a bound on
    their bytes (MCP_LIMIT_MAX_SIGNAL_BYTES_PER_TASK, 10,000 here)."""
    running = await server_factory(store=store_url, limits=Limits(max_signal_bytes_per_task=10_000))
    client = client_for(running)
    await create(client, workflow("bytes-capped", seq("root", wait("gate", "go"), wait("more", "more"))))
    task = await submit(client, "bytes-capped", {})
    await until_status(client, task.task_id, S.TASK_STATUS_WAITING)
    await sent_until_full_of_bytes(client, task.task_id)
    await client.tasks.CancelTask(task_pb2.CancelTaskRequest(task_id=task.task_id, reason="enough"))
    received = [e for e in await events(client, task.task_id) if e.type == E.TASK_EVENT_TYPE_SIGNAL_RECEIVED]
    assert len(received) == 4  # the refused one wrote nothing
    await client.channel.close()


async def test_an_sqlite_file_from_before_the_signal_bytes_limit_opens_and_counts_from_then(server_factory, tmp_path):
    store = f"sqlite:///{tmp_path}/old.db"
    running = await server_factory(store=store)
    client = client_for(running)
    await create(client, workflow("bytes-capped", seq("root", wait("gate", "go"), wait("more", "more"))))
    task = await submit(client, "bytes-capped", {})
    await until_status(client, task.task_id, S.TASK_STATUS_WAITING)
    await signal(client, task.task_id, "more", {"text": "y" * 3000}, request_id="before")
    await client.channel.close()
    await running.stop(0.5)
    with sqlite3.connect(tmp_path / "old.db") as db:  # the file as the server before the limit left it
        db.execute("ALTER TABLE signals DROP COLUMN held_bytes")
    running = await server_factory(store=store, limits=Limits(max_signal_bytes_per_task=10_000))
    client = client_for(running)
    await sent_until_full_of_bytes(client, task.task_id)  # the signal from before counts as 0 bytes
    await client.tasks.CancelTask(task_pb2.CancelTaskRequest(task_id=task.task_id, reason="enough"))
    received = [e for e in await events(client, task.task_id) if e.type == E.TASK_EVENT_TYPE_SIGNAL_RECEIVED]
    assert len(received) == 5
    await client.channel.close()


async def test_two_parallel_waits_for_one_name_are_reached_by_path(served):
    _, client = served
    both = {"id": "both", "parallel": {"children": [wait("legal", "approval"), wait("finance", "approval")]}}
    await create(client, workflow("two-approvals", seq("root", both)))
    task = await submit(client, "two-approvals", {})
    waiting = await until_status(client, task.task_id, S.TASK_STATUS_WAITING)
    assert {p for p, s in step_states(waiting).items() if s.status == task_pb2.STEP_STATUS_WAITING} == {
        "root/both/legal",
        "root/both/finance",
    }
    to_finance = await signal(client, task.task_id, "approval", {"who": "finance"}, step_path="root/both/finance")
    assert to_finance.step_path == "root/both/finance"
    with pytest.raises(grpc.aio.AioRpcError) as taken:  # that step has its signal already
        await signal(client, task.task_id, "approval", {"who": "again"}, step_path="root/both/finance")
    assert taken.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    to_legal = await signal(client, task.task_id, "approval", {"who": "legal"})  # the only one still waiting
    assert to_legal.step_path == "root/both/legal"
    done = await wait_done(client, task.task_id)
    assert result(done) == {"legal": {"who": "legal"}, "finance": {"who": "finance"}}


async def test_the_longest_waiting_step_takes_an_unaddressed_signal(served):
    _, client = served
    staggered = {
        "id": "both",
        "parallel": {
            "children": [
                wait("first", "ok"),
                seq("later", step("pause", "sleep", "{'ms': 300}"), wait("second", "ok")),
            ]
        },
    }
    await create(client, workflow("staggered", seq("root", staggered)))
    task = await submit(client, "staggered", {})
    await until_status(client, task.task_id, S.TASK_STATUS_WAITING)
    assert (await signal(client, task.task_id, "ok", {"n": 1})).step_path == "root/both/first"
    # parked again: after the resumed run wrote its first wait done, WAITING is the new park
    await until_step(client, task.task_id, "root/both/first", task_pb2.STEP_STATUS_COMPLETED)
    await until_status(client, task.task_id, S.TASK_STATUS_WAITING)
    assert (await signal(client, task.task_id, "ok", {"n": 2})).step_path == "root/both/later/second"
    done = await wait_done(client, task.task_id)
    assert result(done) == {"first": {"n": 1}, "later": {"n": 2}}


async def test_signals_that_race_the_park_each_reach_their_wait_in_order(served):
    """Two waits in sequence, two signals sent as fast as a client can, the first at every offset
    across the moment the run parks: the first signal goes to the first wait, the second to the
    second, and every task ends. (Signals taken in while the run parked were kept for no one, and
    a wait an earlier life left stayed listed as waiting, so a later signal could go to it.)"""
    _, client = served
    await create(client, workflow("two-waits", seq("root", wait("a", "go"), wait("b", "go"))))

    async def signalled_twice(offset_ms: float) -> task_pb2.Task:
        task = await submit(client, "two-waits", {})
        await asyncio.sleep(offset_ms / 1000)
        await signal(client, task.task_id, "go", {"n": 1}, request_id="first")
        await signal(client, task.task_id, "go", {"n": 2})
        return await wait_done(client, task.task_id, timeout=15)

    offsets = [i * 0.5 for i in range(40)]  # 0 to 20 ms: the run parks 10 ms after its wait begins
    for done in await asyncio.gather(*(signalled_twice(offset) for offset in offsets)):
        steps = step_states(done)
        outputs = [json_format.MessageToDict(steps[p].output) for p in ("root/a", "root/b")]
        assert done.status == S.TASK_STATUS_COMPLETED and outputs == [{"n": 1}, {"n": 2}], done


async def test_a_cancel_that_races_the_park_ends_the_task(served):
    """CancelTask at every offset across the moment the run parks answers with the task
    CANCELLED, and it stays so. (A cancel that came while the parked run was writing itself
    WAITING interrupted that write and was lost: the task waited on, forever.)"""
    _, client = served
    await create(client, workflow("wait-to-cancel", seq("root", wait("a", "go"))))

    async def cancelled(offset_ms: float) -> tuple[int, task_pb2.Task]:
        task = await submit(client, "wait-to-cancel", {})
        await asyncio.sleep(offset_ms / 1000)
        reply = await client.tasks.CancelTask(task_pb2.CancelTaskRequest(task_id=task.task_id, reason="stop"))
        return reply.task.status, await wait_done(client, task.task_id, timeout=15)

    offsets = [i * 0.5 for i in range(40)]  # 0 to 20 ms: the run parks 10 ms after its wait begins
    for answered, done in await asyncio.gather(*(cancelled(offset) for offset in offsets)):
        assert answered == S.TASK_STATUS_CANCELLED and done.status == S.TASK_STATUS_CANCELLED, done


async def test_a_sleep_parks_the_task_and_its_timer_fires_on_time(server_factory, store_url):
    running = await server_factory(store=store_url, wait_in_memory_seconds=0.1)
    client = client_for(running)
    await create(client, workflow("nap", seq("root", step("a", "echo"), {"id": "nap", "sleep": {"duration": "1.2s"}})))
    started = time.time()
    task = await submit(client, "nap", {"x": 1})
    await until_status(client, task.task_id, S.TASK_STATUS_WAITING)
    assert running.orchestrator.dispatcher.in_flight == 0  # parked: holds no run slot
    done = await wait_done(client, task.task_id)
    took = time.time() - started
    assert done.status == S.TASK_STATUS_COMPLETED and result(done) == {"x": 1}  # a sleep's output is its input
    deadline = step_states(done)["root/nap"].wait.deadline.ToNanoseconds() / 1e9
    assert took >= 1.2 and done.end_time.ToNanoseconds() / 1e9 - deadline < 1.0  # within a second of its time
    await client.channel.close()


async def test_a_sleep_until_a_time_given_by_cel(served):
    _, client = served
    later = "timestamp(input.at)"
    await create(client, workflow("alarm", seq("root", {"id": "alarm", "sleep": {"until": later}})))
    at = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() + 1)) + "Z"
    task = await wait_done(client, (await submit(client, "alarm", {"at": at})).task_id)
    assert task.status == S.TASK_STATUS_COMPLETED
    assert task.end_time.ToNanoseconds() / 1e9 >= time.mktime(time.strptime(at, "%Y-%m-%dT%H:%M:%SZ")) - time.timezone


async def test_a_sleep_until_past_the_year_9999_fails_its_step_and_one_before_1970_has_passed(served):
    """9999-12-31T23:59:59-14:00 is after the last second a timestamp holds: the sleep fails with
    what it was given (it failed the task with an internal ValueError before); a time before
    1970 has passed, and the sleep goes on at once."""
    _, client = served
    await create(client, workflow("edge-alarm", seq("root", {"id": "alarm", "sleep": {"until": "input.at"}})))
    late = await wait_done(client, (await submit(client, "edge-alarm", {"at": "9999-12-31T23:59:59-14:00"})).task_id)
    assert late.status == S.TASK_STATUS_FAILED
    assert "after the year 9999" in late.error.message and "internal" not in late.error.message
    early = await wait_done(client, (await submit(client, "edge-alarm", {"at": "0001-01-01T00:00:00+14:00"})).task_id)
    assert early.status == S.TASK_STATUS_COMPLETED


async def test_cancel_ends_a_wait_at_once(served):
    _, client = served
    await create(client, workflow("abandoned", seq("root", wait("w", "never"))))
    task = await submit(client, "abandoned", {})
    await until_status(client, task.task_id, S.TASK_STATUS_WAITING)
    started = time.monotonic()
    cancelled = (await client.tasks.CancelTask(task_pb2.CancelTaskRequest(task_id=task.task_id, reason="no"))).task
    assert time.monotonic() - started < 2.0
    assert cancelled.status == S.TASK_STATUS_CANCELLED
    assert step_states(cancelled)["root/w"].status == task_pb2.STEP_STATUS_CANCELLED
    with pytest.raises(grpc.aio.AioRpcError) as late:
        await signal(client, task.task_id, "never", {})
    assert late.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_waiting_tasks_hold_no_run_slot(server_factory, store_url):
    running = await server_factory(store=store_url, limits=Limits(max_tasks_in_flight=1))
    client = client_for(running)
    await create(client, workflow("holds", seq("root", wait("w", "go"))))
    await create(client, workflow("quick", step("q", "echo")))
    waiting = [await submit(client, "holds", {}) for _ in range(3)]
    for task in waiting:
        await until_status(client, task.task_id, S.TASK_STATUS_WAITING)
    quick = await wait_done(client, (await submit(client, "quick", {"v": 1})).task_id, timeout=10)
    assert quick.status == S.TASK_STATUS_COMPLETED
    for task in waiting:
        await signal(client, task.task_id, "go", {"ok": True})
    for task in waiting:
        assert (await wait_done(client, task.task_id)).status == S.TASK_STATUS_COMPLETED
    listed = await client.tasks.ListTasks(task_pb2.ListTasksRequest(statuses=[S.TASK_STATUS_WAITING]))
    assert listed.tasks == []
    await client.channel.close()


async def test_waits_in_loops_and_fan_outs_wait_anew_each_time(served):
    _, client = served
    loop = {
        "id": "loop",
        "adaptive": {
            "initial_state": "ask",
            "max_transitions": 10,
            "states": [
                {
                    "name": "ask",
                    "node": wait("answer", "answer"),
                    "transitions": [{"when": "output.done", "to": "end"}, {"to": "ask"}],
                },
                {"name": "end", "terminal": True, "node": step("end", "echo")},
            ],
        },
    }
    per_item = {"id": "each", "map": {"items": "input.items", "body": wait("vote", "vote")}}
    await create(client, workflow("loops", seq("root", per_item, loop)))
    task = await submit(client, "loops", {"items": ["a", "b"]})
    await until_status(client, task.task_id, S.TASK_STATUS_WAITING)
    assert {(await signal(client, task.task_id, "vote", {"v": i})).step_path for i in range(2)} == {
        "root/each/vote[0]",
        "root/each/vote[1]",
    }
    paths = []
    for done in (False, False, True):
        await until_status(client, task.task_id, S.TASK_STATUS_WAITING)
        paths.append((await signal(client, task.task_id, "answer", {"done": done})).step_path)
    assert paths == ["root/loop/answer", "root/loop/answer#2", "root/loop/answer#3"]
    assert (await wait_done(client, task.task_id)).status == S.TASK_STATUS_COMPLETED


async def test_a_malformed_wait_is_refused_before_it_runs(client):
    bad = workflow(
        "bad-waits",
        seq(
            "root",
            wait("a", "has space"),
            wait("b", "ok", on_timeout="{'x': 1}"),
            wait("c", "ok", schema={"type": "no-such-type"}),
            {"id": "d", "sleep": {}},
        ),
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await create(client, bad)
    found = violations(err.value)
    assert "workflow.root.sequence.children[0].wait.signal" in found
    assert "workflow.root.sequence.children[1].wait.on_timeout" in found
    assert "workflow.root.sequence.children[2].wait.schema" in found
    assert "workflow.root.sequence.children[3].sleep" in found


async def test_a_supervised_wait_is_asked_again_each_round(served):
    _, client = served
    supervised = {
        "id": "sup",
        "supervise": {"supervisor": "threshold_supervisor", "max_rounds": 3, "children": [wait("review", "score")]},
    }
    await create(client, workflow("asked-again", seq("root", supervised)))
    task = await submit(client, "asked-again", {})
    await until_status(client, task.task_id, S.TASK_STATUS_WAITING)
    first = await signal(client, task.task_id, "score", {"score": 0.4})
    # the second round's wait itself (a signal sent before it waits is kept for it: no step named)
    await until_step(client, task.task_id, "root/sup/review#2")
    second = await signal(client, task.task_id, "score", {"score": 0.9})
    assert (first.step_path, second.step_path) == ("root/sup/review", "root/sup/review#2")
    done = await wait_done(client, task.task_id)
    assert done.status == S.TASK_STATUS_COMPLETED and result(done)["round"] == 2


@pytest.mark.parametrize("redis", ["redis_url", "cluster_url"])
async def test_a_signal_through_another_replica_reaches_the_run_at_once_by_its_nudge(server_factory, request, redis):
    """A task waiting in memory (held by its replica, not parked) hears of a signal sent through
    another replica from the Redis nudge (one node, and a cluster): the poll that would otherwise
    find it runs once a minute here, longer than SignalTask waits for the take-in (it would
    answer no step)."""
    options = {"store": request.getfixturevalue(redis), "wait_in_memory_seconds": 60, "signal_poll_seconds": 60}
    replicas = [await server_factory(**options), await server_factory(**options)]
    clients = [client_for(r) for r in replicas]
    await create(clients[0], workflow("held-wait", seq("root", wait("w", "go", timeout="30s"), step("after", "echo"))))
    for _ in range(3):  # a nudge after nudges: each reaches its run
        task = await submit(clients[0], "held-wait", {"x": 1})
        await until_step(clients[0], task.task_id, "root/w")
        other = await other_replica(clients, replicas, task.task_id)
        answered = await signal(other, task.task_id, "go", {"ok": True})
        assert answered.step_path == "root/w"  # taken in by the run on the holder, not "" after 5 s
        done = await wait_done(other, task.task_id)
        assert done.status == S.TASK_STATUS_COMPLETED and result(done) == {"ok": True}
    for client in clients:
        await client.channel.close()


async def get(client: Any, task_id: str) -> task_pb2.Task:
    return (await client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=task_id))).task


async def until_step(client: Any, task_id: str, path: str, status: int = task_pb2.STEP_STATUS_WAITING) -> None:
    """Until the task's step at `path` has `status` (a task that a signal resumed shows WAITING
    until its run first writes: the step itself says where the run is)."""
    async with asyncio.timeout(10):
        while (state := step_states(await get(client, task_id)).get(path)) is None or state.status != status:
            await asyncio.sleep(0.02)


async def other_replica(clients: list[Any], replicas: list[Any], task_id: str) -> Any:
    """The client of the replica that does not run the task (of two)."""
    started = await first_of(clients[0], task_id, E.TASK_EVENT_TYPE_STARTED)
    holder = next(i for i, r in enumerate(replicas) if r.orchestrator.settings.replica_id in started.message)
    return clients[1 - holder]


async def first_of(client: Any, task_id: str, kind: int) -> task_pb2.TaskEvent:
    async for event in client.tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=task_id)):
        if event.type == kind:
            return event
    raise AssertionError(f"task {task_id} ended without a {task_pb2.TaskEventType.Name(kind)} event")


async def test_a_redis_user_that_may_not_publish_still_signals_through_another_replica(
    server_factory, redis_url, caplog
):
    """The nudge is best-effort: with an ACL user denied pub/sub, the script that appends the
    signal still appends it (it would fail the whole SignalTask otherwise), the holder's poll of
    pending signals takes it in, and each replica says once that it cannot subscribe."""
    user = f"nopub{uuid.uuid4().hex[:8]}"
    admin = redis.Redis.from_url(redis_url.split("?")[0])
    admin.acl_setuser(user, enabled=True, passwords=["+pw"], keys=["*"], channels=["*"], commands=["+@all", "-@pubsub"])
    try:
        scheme, rest = redis_url.split("://", 1)
        options = {"store": f"{scheme}://{user}:pw@{rest}", "wait_in_memory_seconds": 60}
        replicas = [await server_factory(**options), await server_factory(**options)]
        clients = [client_for(r) for r in replicas]
        await create(clients[0], workflow("held-wait", seq("root", wait("w", "go", timeout="30s"))))
        task = await submit(clients[0], "held-wait", {"x": 1})
        await until_step(clients[0], task.task_id, "root/w")
        answered = await signal(await other_replica(clients, replicas, task.task_id), task.task_id, "go", {"ok": True})
        assert answered.step_path == "root/w"
        assert (await wait_done(clients[0], task.task_id)).status == S.TASK_STATUS_COMPLETED
        said = [r.getMessage() for r in caplog.records if "may not subscribe" in r.getMessage()]
        assert len([m for m in said if "signals" in m]) == 2, said  # once per replica, not on every retry
        for client in clients:
            await client.channel.close()
    finally:
        admin.acl_deluser(user)
        admin.close()


async def test_a_parked_run_resumes_with_the_steps_inside_the_nodes_that_finished_before(server_factory, store_url):
    """After a park the run is loaded again from its records and replays its tree; the parallel
    (and the subworkflow's sequence) that finished before are not entered again, yet the prompt
    and the steps after read `steps.a` inside them: found in the first life, found after."""
    running = await server_factory(store=store_url, wait_in_memory_seconds=0.1)
    client = client_for(running)
    both = {"id": "both", "parallel": {"children": [step("a", "echo", "{'text': 'A'}"), step("b", "echo")]}}
    inner = seq("inner", seq("prep", step("p", "echo", "{'text': 'P'}")), wait("ask", "go", prompt="steps.p.text"))
    await create(client, workflow("inside-child", inner))
    outer = seq(
        "root",
        both,
        wait("w", "go", prompt="{'a': steps.a.text}"),
        {"id": "child", "subworkflow": {"workflow_id": "inside-child"}},
        step("c", "echo", "{'a': steps.a.text, 'asked': steps.child}"),
    )
    await create(client, workflow("inside", outer))
    task = await submit(client, "inside", {})
    for path in ("root/w", "root/child/inner/ask"):
        await until_status(client, task.task_id, S.TASK_STATUS_WAITING)
        async with asyncio.timeout(10):
            while running.orchestrator.dispatcher.in_flight:  # parked: loaded again from its records
                await asyncio.sleep(0.02)
        assert (await signal(client, task.task_id, "go", {"ok": path})).step_path == path
    done = await wait_done(client, task.task_id)
    assert done.status == S.TASK_STATUS_COMPLETED, done.error
    assert result(done) == {"a": "A", "asked": {"ok": "root/child/inner/ask"}}
    assert json_format.MessageToDict(step_states(done)["root/child/inner/ask"].input) == "P"
    await client.channel.close()


async def test_a_waiting_task_a_signal_leased_to_a_replica_that_never_ran_it_resumes_when_the_lease_runs_out(
    server_factory, store_url
):
    """A signal to a parked task leases it to the replica it reached, to resume there at once; a
    replica that dies before its run starts leaves the task WAITING with a lease. When the lease
    runs out the task goes back to the queue (it stayed WAITING forever, on both stores)."""
    running = await server_factory(store=store_url, wait_in_memory_seconds=0.1, lease_seconds=1.0)
    client = client_for(running)
    await create(client, workflow("leased", seq("root", wait("w", "go"), step("after", "echo"))))
    task = await submit(client, "leased", {"x": 1})
    await parked(client, task.task_id, running)
    dispatcher = running.orchestrator.dispatcher
    adopt = dispatcher.adopt
    dispatcher.adopt = lambda *args, **kwargs: None  # leased here, and then this replica "dies" before running it
    try:
        await signal(client, task.task_id, "go", {"ok": True})
    finally:
        dispatcher.adopt = adopt
    done = await wait_done(client, task.task_id, timeout=20)
    assert done.status == S.TASK_STATUS_COMPLETED and result(done) == {"ok": True}
    await client.channel.close()
