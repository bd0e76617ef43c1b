"""TaskService over real gRPC: submit, get, list, cancel, watch, and their errors."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from mcp_sdk.proto import task_pb2
from tests.conftest import client_for
from tests.helpers import (
    create,
    error_reason,
    events,
    result,
    step,
    step_states,
    submit,
    until_plugin_called,
    violations,
    wait_done,
    workflow,
)

pytestmark = pytest.mark.asyncio
E = task_pb2.TaskEventType


async def test_a_sequence_passes_each_output_to_the_next_step_and_records_every_step(client):
    wf = workflow(
        "seq", {"id": "root", "sequence": {"children": [step("a", "append"), step("b", "append"), step("c", "append")]}}
    )
    await create(client, wf)
    task = await wait_done(client, (await submit(client, "seq", {"text": ">"})).task_id)
    assert task.status == task_pb2.TASK_STATUS_COMPLETED
    assert result(task)["text"] == ">abc"
    assert result(task)["trail"] == ["root/a", "root/b", "root/c"]
    states = step_states(task)
    assert [p for p in states] == ["root", "root/a", "root/b", "root/c"]
    assert all(s.status == task_pb2.STEP_STATUS_COMPLETED for s in states.values())
    assert states["root/b"].protocol == "append" and states["root/b"].attempts == 1
    assert states["root/b"].output.struct_value.fields["text"].string_value == ">ab"
    assert task.start_time.seconds and task.end_time.seconds and task.workflow_version == 1


async def test_watch_replays_a_gapless_log_and_ends_after_the_terminal_event(client):
    await create(
        client, workflow("w", {"id": "root", "sequence": {"children": [step("a", "echo"), step("b", "echo")]}})
    )
    task = await submit(client, "w", {"x": 1})
    log = await events(client, task.task_id)
    assert [e.sequence for e in log] == list(range(1, len(log) + 1))
    assert log[0].type == E.TASK_EVENT_TYPE_QUEUED and log[-1].type == E.TASK_EVENT_TYPE_COMPLETED
    assert [e.step_path for e in log if e.type == E.TASK_EVENT_TYPE_STEP_COMPLETED] == ["root/a", "root/b", "root"]
    tail = await events(client, task.task_id, after=3)
    assert [e.sequence for e in tail] == list(range(4, len(log) + 1))
    past_end = await events(client, task.task_id, after=len(log) + 50)
    assert past_end == []


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
async def test_a_watch_after_any_uint64_sequence_ends_cleanly(server_factory, tmp_path, request, kind):
    """after_sequence is a uint64; the stores keep sequences as int64. A replica that does not
    follow the task reads its events from the store: after 2^63 that read failed INTERNAL on
    SQLite (an integer too large for it), found by the console's ?after= of a huge number."""
    store = f"sqlite:///{tmp_path}/watch.db" if kind == "sqlite" else request.getfixturevalue("redis_url")
    running = await server_factory(store=store)
    first = client_for(running)
    await create(first, workflow("w-edge", step("a", "echo")))
    task = await wait_done(first, (await submit(first, "w-edge", {})).task_id)
    for after in (2**63, 2**64 - 1):  # each through a replica of its own, which reads the store
        if kind == "sqlite":  # one server per file: the next is a restart, which reads the store too
            await running.stop(0.5)
        running = await server_factory(store=store)
        other = client_for(running)
        assert await events(other, task.task_id, after=after) == []
        batches = other.tasks.WatchTaskEvents(task_pb2.WatchTaskRequest(task_id=task.task_id, after_sequence=after))
        assert [b async for b in batches] == []
        await other.channel.close()
    last = client_for(running)
    assert len(await events(last, task.task_id)) == task.last_sequence
    await last.channel.close()
    await first.channel.close()


async def test_watch_past_the_end_of_a_running_task_waits_for_new_events(client):
    await create(client, workflow("slow", step("nap", "sleep", "{'ms': 400}")))
    task = await submit(client, "slow")
    await asyncio.sleep(0.15)
    current = (await client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=task.task_id))).task.last_sequence
    later = await events(client, task.task_id, after=current)
    assert later and later[0].sequence == current + 1
    assert later[-1].type == E.TASK_EVENT_TYPE_COMPLETED


async def test_several_watchers_see_the_same_events_live(client):
    await create(
        client,
        workflow(
            "multi", {"id": "r", "sequence": {"children": [step("a", "sleep", "{'ms': 100}"), step("b", "echo")]}}
        ),
    )
    task = await submit(client, "multi")
    logs = await asyncio.gather(*(events(client, task.task_id) for _ in range(5)))
    assert all([e.sequence for e in log] == [e.sequence for e in logs[0]] for log in logs)


async def test_watch_task_events_sends_the_same_log_in_fewer_messages(client):
    await create(
        client,
        workflow(
            "batched", {"id": "r", "sequence": {"children": [step(f"s{i}", "sleep", "{'ms': 20}") for i in range(4)]}}
        ),
    )
    task = await submit(client, "batched")
    batches = [
        list(m.events) async for m in client.tasks.WatchTaskEvents(task_pb2.WatchTaskRequest(task_id=task.task_id))
    ]
    flat = [e for batch in batches for e in batch]
    assert [e.sequence for e in flat] == [e.sequence for e in await events(client, task.task_id)]
    assert flat[-1].type == E.TASK_EVENT_TYPE_COMPLETED and all(batch for batch in batches)
    assert len(batches) < len(flat)  # events written together arrive together
    tail = [
        e
        async for m in client.tasks.WatchTaskEvents(task_pb2.WatchTaskRequest(task_id=task.task_id, after_sequence=5))
        for e in m.events
    ]
    assert [e.sequence for e in tail] == list(range(6, len(flat) + 1))


async def test_same_request_id_returns_the_same_task(client):
    await create(client, workflow("idem", step("s", "echo")))
    first = await client.tasks.SubmitTask(task_pb2.SubmitTaskRequest(workflow_id="idem", request_id="req-1"))
    again = await client.tasks.SubmitTask(task_pb2.SubmitTaskRequest(workflow_id="idem", request_id="req-1"))
    other = await client.tasks.SubmitTask(task_pb2.SubmitTaskRequest(workflow_id="idem", request_id="req-2"))
    assert first.created and not again.created and other.created
    assert again.task.task_id == first.task.task_id != other.task.task_id
    listed = await client.tasks.ListTasks(task_pb2.ListTasksRequest(workflow_id="idem"))
    assert len(listed.tasks) == 2


async def test_list_filters_by_status_and_workflow_and_pages_newest_first(client):
    await create(client, workflow("ok", step("s", "echo")))
    await create(client, workflow("bad", step("s", "fail", "{'code': 'INVALID_ARGUMENT'}")))
    ok_ids = [(await submit(client, "ok")).task_id for _ in range(5)]
    bad_id = (await submit(client, "bad")).task_id
    for task_id in [*ok_ids, bad_id]:
        await wait_done(client, task_id)
    failed = await client.tasks.ListTasks(task_pb2.ListTasksRequest(statuses=[task_pb2.TASK_STATUS_FAILED]))
    assert [t.task_id for t in failed.tasks] == [bad_id]
    seen, token = [], ""
    while True:
        page = await client.tasks.ListTasks(task_pb2.ListTasksRequest(workflow_id="ok", page_size=2, page_token=token))
        seen += [t.task_id for t in page.tasks]
        token = page.next_page_token
        if not token:
            break
    assert seen == list(reversed(ok_ids))


async def test_cancel_stops_a_running_task_and_a_second_cancel_is_harmless(client, testkit):
    await create(client, workflow("long", step("nap", "sleep", "{'ms': 10000}")))
    task = await submit(client, "long")
    await until_plugin_called(testkit, task.task_id)
    cancelled = (
        await client.tasks.CancelTask(task_pb2.CancelTaskRequest(task_id=task.task_id, reason="changed my mind"))
    ).task
    assert cancelled.status == task_pb2.TASK_STATUS_CANCELLED
    again = (await client.tasks.CancelTask(task_pb2.CancelTaskRequest(task_id=task.task_id))).task
    assert again.status == task_pb2.TASK_STATUS_CANCELLED
    log = await events(client, task.task_id)
    assert log[-1].type == E.TASK_EVENT_TYPE_CANCELLED and "changed my mind" in log[-1].message
    from tests.helpers import plugin_stats

    for _ in range(50):
        if (await plugin_stats(testkit))["cancelled"] >= 1:
            break
        await asyncio.sleep(0.05)
    assert (await plugin_stats(testkit))["cancelled"] == 1


async def test_cancel_of_a_finished_task_is_failed_precondition(client):
    await create(client, workflow("quick", step("s", "echo")))
    task = await wait_done(client, (await submit(client, "quick")).task_id)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.tasks.CancelTask(task_pb2.CancelTaskRequest(task_id=task.task_id))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(err.value) == "TASK_FINISHED"


async def test_unknown_workflow_and_unknown_task_are_not_found(client):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await submit(client, "never-created")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and error_reason(err.value) == "WORKFLOW_NOT_FOUND"
    for call in (
        client.tasks.GetTask(task_pb2.GetTaskRequest(task_id="nope")),
        client.tasks.CancelTask(task_pb2.CancelTaskRequest(task_id="nope")),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await events(client, "nope")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_input_over_the_size_limit_is_rejected_naming_the_field(client):
    await create(client, workflow("big", step("s", "echo")))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await submit(client, "big", {"blob": "x" * (1024 * 1024 + 10)})
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input_data" in violations(err.value)


async def test_empty_required_fields_are_invalid_argument(client):
    for call, field in (
        (client.tasks.SubmitTask(task_pb2.SubmitTaskRequest()), "workflow_id"),
        (client.tasks.GetTask(task_pb2.GetTaskRequest()), "task_id"),
        (client.tasks.ListTasks(task_pb2.ListTasksRequest(page_size=-1)), "page_size"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in violations(err.value)


async def test_higher_priority_runs_first(server, client):
    await create(client, workflow("prio", step("s", "echo")))
    await server.orchestrator.dispatcher.stop(0)  # hold the queue while we fill it
    low = [await submit(client, "prio", priority=1) for _ in range(3)]
    high = await submit(client, "prio", priority=9)
    server.orchestrator.dispatcher.start()
    done = [await wait_done(client, t.task_id) for t in [*low, high]]
    order = sorted(done, key=lambda t: t.start_time.ToNanoseconds())
    assert order[0].task_id == high.task_id
    assert [t.task_id for t in order[1:]] == [t.task_id for t in low]


# ---- RunTask: submit and wait in one call ---------------------------------------------------
async def test_run_task_answers_with_the_finished_task_and_its_result(client):
    await create(
        client, workflow("ran", {"id": "root", "sequence": {"children": [step("a", "append"), step("b", "append")]}})
    )
    request = task_pb2.SubmitTaskRequest(workflow_id="ran", request_id="run-once")
    request.input_data.update({"text": ">"})
    call = client.tasks.RunTask(request, timeout=30)
    header = dict(await call.initial_metadata())
    reply = await call
    assert reply.created and reply.task.status == task_pb2.TASK_STATUS_COMPLETED
    assert header["mcp-task-id"] == reply.task.task_id  # the call has a deadline (that it came early: the Node test)
    assert result(reply.task)["text"] == ">ab" and not reply.task.steps  # the BASIC view
    log = await events(client, reply.task.task_id)
    assert log[-1].type == E.TASK_EVENT_TYPE_COMPLETED and reply.task.last_sequence == log[-1].sequence
    stored = (
        await client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=reply.task.task_id, view=task_pb2.TASK_VIEW_BASIC))
    ).task
    assert reply.task == stored  # answered from the run's own end, exactly what the store holds
    again = await client.tasks.RunTask(request)  # the same request id: the same task, already ended
    assert not again.created and again.task.task_id == reply.task.task_id and result(again.task)["text"] == ">ab"


async def test_run_task_of_a_failing_workflow_answers_with_the_failed_task(client):
    await create(client, workflow("ran-fail", step("f", "fail", "{'code': 'INVALID_ARGUMENT', 'message': 'no good'}")))
    reply = await client.tasks.RunTask(task_pb2.SubmitTaskRequest(workflow_id="ran-fail"))
    assert reply.task.status == task_pb2.TASK_STATUS_FAILED and "no good" in reply.task.error.message
    stored = (
        await client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=reply.task.task_id, view=task_pb2.TASK_VIEW_BASIC))
    ).task
    assert reply.task == stored


async def test_run_task_answers_with_a_large_input_and_result_by_reference_as_get_task_does(client):
    await create(client, workflow("ran-big", step("e", "echo")))
    request = task_pb2.SubmitTaskRequest(workflow_id="ran-big")
    request.input_data.update({"blob": "x" * 200_000})
    reply = await client.tasks.RunTask(request)
    assert reply.task.status == task_pb2.TASK_STATUS_COMPLETED
    assert reply.task.HasField("result_ref") and reply.task.HasField("input_ref") and not reply.task.HasField("result")
    stored = (
        await client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=reply.task.task_id, view=task_pb2.TASK_VIEW_BASIC))
    ).task
    assert reply.task == stored


async def test_run_task_refuses_what_submit_refuses(client):
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await client.tasks.RunTask(task_pb2.SubmitTaskRequest())
    assert missing.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "workflow_id" in violations(missing.value)
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await client.tasks.RunTask(task_pb2.SubmitTaskRequest(workflow_id="nobody-made-this"))
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND and error_reason(unknown.value) == "WORKFLOW_NOT_FOUND"


async def test_a_run_task_whose_deadline_ends_first_leaves_the_task_running_and_named(client):
    await create(client, workflow("ran-slow", step("nap", "sleep", "{'ms': 600}")))
    call = client.tasks.RunTask(task_pb2.SubmitTaskRequest(workflow_id="ran-slow"), timeout=0.2)
    task_id = dict(await call.initial_metadata())["mcp-task-id"]
    with pytest.raises(grpc.aio.AioRpcError) as late:
        await call
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    finished = await wait_done(client, task_id)
    assert finished.status == task_pb2.TASK_STATUS_COMPLETED  # the task ran on; its id came in the headers


async def test_run_task_on_redis_answers_as_get_task_does_whichever_replica_ran_the_task(server_factory, redis_url):
    """Two replicas on one Redis. A RunTask to the one that runs tasks is answered from the run's
    own end; one to a replica with no room to run anything (max tasks in flight 0) waits while
    the other replica claims and runs the task, and is answered from the store. Both answers
    are what GetTask says."""
    from dataclasses import replace

    from mcp_server.settings import Limits
    from tests.conftest import client_for

    worker = await server_factory(redis_url)
    front = await server_factory(redis_url, limits=replace(Limits(), max_tasks_in_flight=0))
    clients = [client_for(worker), client_for(front)]
    await create(
        clients[0],
        workflow("ran-redis", {"id": "root", "sequence": {"children": [step("a", "append"), step("b", "append")]}}),
    )
    for client in clients:
        request = task_pb2.SubmitTaskRequest(workflow_id="ran-redis")
        request.input_data.update({"text": "-"})
        reply = await client.tasks.RunTask(request, timeout=30)
        stored = (
            await client.tasks.GetTask(
                task_pb2.GetTaskRequest(task_id=reply.task.task_id, view=task_pb2.TASK_VIEW_BASIC)
            )
        ).task
        assert reply.task == stored and result(reply.task)["text"] == "-ab"
        started = [e for e in await events(client, reply.task.task_id) if e.type == E.TASK_EVENT_TYPE_STARTED]
        assert (
            started[0].data.fields["replica"].string_value == worker.orchestrator.settings.replica_id
        )  # the worker ran both
    for client in clients:
        await client.channel.close()


async def test_a_long_step_s_start_is_written_and_watched_while_it_runs(client):
    """Starts are written with the next write or within the start write delay: a step that
    runs long still shows as started, durably, long before it ends."""
    await create(client, workflow("long-start", step("nap", "sleep", "{'ms': 1500}")))
    task = await submit(client, "long-start")
    async for event in client.tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=task.task_id)):
        if event.type == E.TASK_EVENT_TYPE_STEP_STARTED and event.step_path == "nap":
            break
    seen = (await client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=task.task_id))).task
    assert (
        seen.status == task_pb2.TASK_STATUS_RUNNING and step_states(seen)["nap"].status == task_pb2.STEP_STATUS_RUNNING
    )
    assert (await wait_done(client, task.task_id)).status == task_pb2.TASK_STATUS_COMPLETED


async def test_a_run_task_whose_task_is_cancelled_answers_with_the_cancelled_task(client):
    await create(client, workflow("ran-cancel", step("nap", "sleep", "{'ms': 5000}")))
    call = client.tasks.RunTask(task_pb2.SubmitTaskRequest(workflow_id="ran-cancel"), timeout=30)
    listed: list[task_pb2.Task] = []
    while not listed:  # a Python unary call hands over its headers only with the answer: find the task by listing
        await asyncio.sleep(0.05)
        listed = list((await client.tasks.ListTasks(task_pb2.ListTasksRequest(workflow_id="ran-cancel"))).tasks)
    await client.tasks.CancelTask(task_pb2.CancelTaskRequest(task_id=listed[0].task_id, reason="changed my mind"))
    reply = await call
    assert reply.task.task_id == listed[0].task_id
    assert reply.task.status == task_pb2.TASK_STATUS_CANCELLED and "changed my mind" in reply.task.error.message
    stored = (
        await client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=reply.task.task_id, view=task_pb2.TASK_VIEW_BASIC))
    ).task
    assert reply.task == stored


# ---- SubmitAndWatchTask: submit and follow in one stream ------------------------------------
async def submit_and_watch(client, request: task_pb2.SubmitTaskRequest) -> list[task_pb2.SubmitAndWatchTaskResponse]:
    return [reply async for reply in client.tasks.SubmitAndWatchTask(request, timeout=30)]


async def test_submit_and_watch_streams_the_submitted_task_then_its_whole_log(client):
    await create(
        client,
        workflow(
            "saw", {"id": "root", "sequence": {"children": [step("a", "append"), step("b", "sleep", "{'ms': 50}")]}}
        ),
    )
    request = task_pb2.SubmitTaskRequest(workflow_id="saw", request_id="saw-once")
    request.input_data.update({"text": ">"})
    replies = await submit_and_watch(client, request)
    first = replies[0].submitted
    assert first.created and first.task.workflow_id == "saw" and first.task.task_id
    assert all(not r.HasField("submitted") for r in replies[1:]) and all(r.events for r in replies)
    streamed = [e for r in replies for e in r.events]
    assert streamed[0].type == E.TASK_EVENT_TYPE_QUEUED and streamed[-1].type == E.TASK_EVENT_TYPE_COMPLETED
    assert all(e.task_id == first.task.task_id for e in streamed)
    assert streamed == await events(client, first.task.task_id)  # the whole log, gap-free, as a watch replays it
    again = await submit_and_watch(client, request)  # the same request id: the same task, streamed from its first event
    assert not again[0].submitted.created and again[0].submitted.task.task_id == first.task.task_id
    assert [e for r in again for e in r.events] == streamed


async def test_submit_and_watch_streams_a_failure_to_its_terminal_event(client):
    await create(client, workflow("saw-fail", step("f", "fail", "{'code': 'INVALID_ARGUMENT', 'message': 'no good'}")))
    replies = await submit_and_watch(client, task_pb2.SubmitTaskRequest(workflow_id="saw-fail"))
    last = replies[-1].events[-1]
    assert last.type == E.TASK_EVENT_TYPE_FAILED and "no good" in last.message


async def test_submit_and_watch_refuses_what_submit_refuses_before_streaming(client):
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await submit_and_watch(client, task_pb2.SubmitTaskRequest())
    assert missing.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "workflow_id" in violations(missing.value)
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await submit_and_watch(client, task_pb2.SubmitTaskRequest(workflow_id="nobody-made-this"))
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND and error_reason(unknown.value) == "WORKFLOW_NOT_FOUND"


async def test_a_broken_submit_and_watch_goes_on_with_a_watch_after_the_last_event_seen(client):
    """The client reads the first messages and drops the stream; the task runs on, and a watch
    after the last sequence it saw gives the rest of the log, nothing twice, nothing missing."""
    await create(
        client,
        workflow(
            "saw-cut", {"id": "r", "sequence": {"children": [step(f"s{i}", "sleep", "{'ms': 60}") for i in range(3)]}}
        ),
    )
    call = client.tasks.SubmitAndWatchTask(task_pb2.SubmitTaskRequest(workflow_id="saw-cut"), timeout=30)
    seen: list[task_pb2.TaskEvent] = []
    task_id = ""
    async for reply in call:
        task_id = task_id or reply.submitted.task.task_id
        seen += reply.events
        if any(e.type == E.TASK_EVENT_TYPE_STEP_COMPLETED for e in seen):
            break
    call.cancel()
    rest = [
        e
        async for m in client.tasks.WatchTaskEvents(
            task_pb2.WatchTaskRequest(task_id=task_id, after_sequence=seen[-1].sequence)
        )
        for e in m.events
    ]
    assert seen + rest == await events(client, task_id)
    assert rest[-1].type == E.TASK_EVENT_TYPE_COMPLETED


async def test_submit_and_watch_on_redis_follows_a_task_another_replica_runs(server_factory, redis_url):
    """Two replicas on one Redis; the one called has no room to run anything, so the other
    claims the task: the stream follows it there, from the first event to the last."""
    from dataclasses import replace

    from mcp_server.settings import Limits
    from tests.conftest import client_for

    worker = await server_factory(redis_url)
    front = await server_factory(redis_url, limits=replace(Limits(), max_tasks_in_flight=0))
    clients = [client_for(worker), client_for(front)]
    await create(
        clients[0],
        workflow("saw-redis", {"id": "root", "sequence": {"children": [step("a", "append"), step("b", "append")]}}),
    )
    for client in clients:
        replies = await submit_and_watch(client, task_pb2.SubmitTaskRequest(workflow_id="saw-redis"))
        task_id = replies[0].submitted.task.task_id
        streamed = [e for r in replies for e in r.events]
        assert streamed == await events(client, task_id) and streamed[-1].type == E.TASK_EVENT_TYPE_COMPLETED
        started = [e for e in streamed if e.type == E.TASK_EVENT_TYPE_STARTED]
        assert started[0].data.fields["replica"].string_value == worker.orchestrator.settings.replica_id
    for client in clients:
        await client.channel.close()
