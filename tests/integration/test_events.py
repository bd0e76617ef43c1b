"""Events start workflows, on both stores: every workflow whose latest version has a trigger on
the event's name, and whose filter holds, gets a task with the input its trigger makes of the
event; a publish sent again gets the same tasks; a refusal for good is answered per workflow, one
for now fails the call after starting the rest; versions, deletes and owners are respected."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from mcp_sdk import Client as SdkClient
from mcp_sdk.proto import events_pb2, events_pb2_grpc, task_pb2, workflow_pb2
from mcp_server.settings import Limits
from tests.conftest import client_for
from tests.helpers import (
    bearer,
    create,
    error_reason,
    parked,
    principals_file,
    publish_request,
    result,
    step,
    violations,
    wait_done,
    workflow,
)

pytestmark = pytest.mark.asyncio
S = task_pb2.TaskStatus


def subscribed(workflow_id: str, *triggers: dict[str, Any], **extra: Any):
    return workflow(workflow_id, step("e", "echo"), triggers=list(triggers), **extra)


def step_output(task: task_pb2.Task, path: str) -> Any:
    state = next(s for s in task.steps if s.path == path)
    return json_format.MessageToDict(state.output)


def by_workflow(reply: events_pb2.PublishEventResponse) -> dict[str, events_pb2.TriggeredTask]:
    return {t.workflow_id: t for t in reply.tasks}


async def test_an_event_starts_every_workflow_whose_trigger_takes_it(events_server):
    _, client, events = events_server
    await create(client, subscribed("receipt", {"event": "order.paid", "input": "{'order': event.data.id}"}))
    await create(client, subscribed("big", {"event": "order.paid", "filter": "event.data.total > 100"}))
    await create(client, subscribed("other", {"event": "order.refunded"}))
    await create(client, workflow("none", step("e", "echo")))

    reply = await events.PublishEvent(publish_request("order.paid", {"id": "o-1", "total": 250}, request_id="evt-1"))
    assert reply.event_id == "evt-1" and not reply.refused
    started = by_workflow(reply)
    assert sorted(started) == ["big", "receipt"] and all(t.created for t in reply.tasks)
    receipt = await wait_done(client, started["receipt"].task_id)
    assert receipt.status == S.TASK_STATUS_COMPLETED and result(receipt) == {"order": "o-1"}
    big = await wait_done(client, started["big"].task_id)
    assert result(big) == {"id": "o-1", "total": 250}  # no input: the event's data
    assert big.labels["mcp/event"] == "order.paid" and big.labels["mcp/event-id"] == "evt-1"

    small = await events.PublishEvent(publish_request("order.paid", {"id": "o-2", "total": 5}))
    assert list(by_workflow(small)) == ["receipt"] and len(small.event_id) == 32  # an id was made
    nobody = await events.PublishEvent(publish_request("nothing.listens", {"x": 1}))
    assert not nobody.tasks and not nobody.refused


async def test_a_publish_sent_again_gets_the_tasks_it_started(events_server):
    running, client, events = events_server
    await create(client, subscribed("a", {"event": "tick"}))
    await create(client, subscribed("b", {"event": "tick"}))
    first = await events.PublishEvent(publish_request("tick", {"n": 1}, request_id="same", labels={"src": "test"}))
    again = await events.PublishEvent(publish_request("tick", {"n": 1}, request_id="same", labels={"src": "test"}))
    assert {t.workflow_id: t.task_id for t in first.tasks} == {t.workflow_id: t.task_id for t in again.tasks}
    assert all(t.created for t in first.tasks) and not any(t.created for t in again.tasks)
    listed = await client.tasks.ListTasks(task_pb2.ListTasksRequest(labels={"mcp/event-id": "same"}))
    assert len(listed.tasks) == 2 and all(t.labels["src"] == "test" for t in listed.tasks)
    counted = running.orchestrator.metrics.event_tasks
    assert (counted.labels("started")._value.get(), counted.labels("existing")._value.get()) == (2, 2)


async def test_refusals_for_good_are_answered_per_workflow_and_the_rest_start(events_server):
    _, client, events = events_server
    schema = {"type": "object", "required": ["id"], "properties": {"id": {"type": "string"}}}
    await create(client, subscribed("strict", {"event": "e"}, input_schema=schema))
    await create(client, subscribed("not-object", {"event": "e", "input": "event.data.n"}))
    await create(client, subscribed("bad-filter", {"event": "e", "filter": "event.data.missing > 1"}))
    await create(client, subscribed("fine", {"event": "e"}))
    reply = await events.PublishEvent(publish_request("e", {"n": 3}))
    assert list(by_workflow(reply)) == ["fine"]
    refused = {r.workflow_id: r.status for r in reply.refused}
    assert sorted(refused) == ["bad-filter", "not-object", "strict"]
    assert all(status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] for status in refused.values())
    assert "no such key" in refused["bad-filter"].message
    assert "not an object" in refused["not-object"].message
    assert "input_data" in refused["strict"].message


async def test_only_the_latest_live_version_s_triggers_count(events_server):
    _, client, events = events_server
    await create(client, subscribed("w", {"event": "ping"}))
    await create(client, workflow("w", step("e", "echo")))  # version 2 has no trigger
    assert not (await events.PublishEvent(publish_request("ping"))).tasks
    await create(client, subscribed("w", {"event": "ping", "filter": "true"}))  # version 3 has it again
    reply = await events.PublishEvent(publish_request("ping"))
    assert [(t.workflow_id, t.workflow_version) for t in reply.tasks] == [("w", 3)]
    await client.workflows.DeleteWorkflow(workflow_pb2.DeleteWorkflowRequest(workflow_id="w"))
    assert not (await events.PublishEvent(publish_request("ping"))).tasks


async def test_a_refusal_for_now_fails_the_call_and_a_retry_starts_the_rest(server_factory, store_url):
    running = await server_factory(store=store_url, limits=Limits(max_tasks_in_flight=0, max_queued_per_owner=2))
    client = client_for(running)
    events = events_pb2_grpc.EventServiceStub(client.channel)
    for name in ("a", "b", "c"):
        await create(client, subscribed(name, {"event": "burst"}))
    with pytest.raises(grpc.aio.AioRpcError) as full:
        await events.PublishEvent(publish_request("burst", request_id="r1"))
    assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    queued = (await client.tasks.ListTasks(task_pb2.ListTasksRequest(labels={"mcp/event-id": "r1"}))).tasks
    assert len(queued) == 2
    await client.tasks.CancelTask(task_pb2.CancelTaskRequest(task_id=queued[0].task_id))
    await asyncio.sleep(0.2)  # the queue's counts are cached for 0.1 s
    reply = await events.PublishEvent(publish_request("burst", request_id="r1"))
    assert sorted(t.workflow_id for t in reply.tasks) == ["a", "b", "c"]
    assert sum(t.created for t in reply.tasks) == 1
    await client.channel.close()


async def test_bad_events_and_triggers_are_refused_naming_the_field(events_server):
    _, client, events = events_server
    with pytest.raises(grpc.aio.AioRpcError) as bad_name:
        await events.PublishEvent(publish_request("has space"))
    assert bad_name.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "name" in violations(bad_name.value)
    deep: Any = "leaf"
    for _ in range(40):  # lists: protobuf reads the request (100 levels of messages), deeper than a value may be
        deep = [deep]
    with pytest.raises(grpc.aio.AioRpcError) as too_deep:
        await events.PublishEvent(publish_request("deep", {"v": deep}))
    assert too_deep.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "data" in violations(too_deep.value)
    with pytest.raises(grpc.aio.AioRpcError) as long_id:
        await events.PublishEvent(publish_request("ok", request_id="x" * 129))
    assert long_id.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "request_id" in violations(long_id.value)
    bad = subscribed(
        "bad",
        {"event": "ok", "filter": "input.x > 1"},
        {"event": "not ok!", "input": "{'x': event.data"},
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await create(client, bad)
    found = violations(refused.value)
    assert "unknown variable 'input'" in found["workflow.triggers[0].filter"]
    assert "workflow.triggers[1].event" in found and "CEL does not compile" in found["workflow.triggers[1].input"]


async def test_each_publisher_owns_the_tasks_its_events_start(server_factory, tmp_path):
    auth = principals_file(tmp_path, {"ada": [], "bob": [], "root": ["admin"]})
    running = await server_factory(auth_file=auth)
    client = client_for(running)
    events = events_pb2_grpc.EventServiceStub(client.channel)
    await client.workflows.CreateWorkflow(
        workflow_pb2.CreateWorkflowRequest(workflow=subscribed("mine", {"event": "hello"})), metadata=bearer("root")
    )
    reply = await events.PublishEvent(publish_request("hello", request_id="shared"), metadata=bearer("ada"))
    again = await events.PublishEvent(publish_request("hello", request_id="shared"), metadata=bearer("bob"))
    assert reply.tasks[0].task_id != again.tasks[0].task_id  # a request_id is the publisher's own
    task = (
        await client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=reply.tasks[0].task_id), metadata=bearer("ada"))
    ).task
    assert task.owner == "ada"
    with pytest.raises(grpc.aio.AioRpcError) as hidden:
        await client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=reply.tasks[0].task_id), metadata=bearer("bob"))
    assert hidden.value.code() == grpc.StatusCode.NOT_FOUND
    await client.channel.close()


async def test_the_sdk_publishes_with_an_id_of_its_own_and_again_with_it(events_server):
    running, client, _ = events_server
    await create(client, subscribed("sdk-target", {"event": "sdk.hello", "input": "{'who': event.labels.src}"}))
    async with SdkClient(running.address) as sdk:
        reply = await sdk.publish_event("sdk.hello", {"n": 1}, labels={"src": "sdk"})
        assert len(reply.event_id) == 32 and [t.workflow_id for t in reply.tasks] == ["sdk-target"]
        again = await sdk.publish_event("sdk.hello", {"n": 1}, labels={"src": "sdk"}, request_id=reply.event_id)
        assert [t.task_id for t in again.tasks] == [reply.tasks[0].task_id] and not again.tasks[0].created
    done = await wait_done(client, reply.tasks[0].task_id)
    assert result(done) == {"who": "sdk"}


async def test_an_event_starts_at_most_the_workflows_the_limit_allows(server_factory, store_url):
    running = await server_factory(store=store_url, limits=Limits(max_workflows_per_event=2))
    client = client_for(running)
    await create(client, subscribed("one", {"event": "busy"}))
    await create(client, subscribed("two", {"event": "busy"}))
    with pytest.raises(grpc.aio.AioRpcError) as full:
        await create(client, subscribed("three", {"event": "quiet"}, {"event": "busy"}))
    assert full.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(full.value) == "EVENT_SUBSCRIBERS_FULL"
    assert "MCP_LIMIT_MAX_WORKFLOWS_PER_EVENT" in violations(full.value)["workflow.triggers[1].event"]
    await create(client, subscribed("two", {"event": "busy", "filter": "true"}))  # a new version of one of them
    await client.workflows.DeleteWorkflow(workflow_pb2.DeleteWorkflowRequest(workflow_id="one"))
    await create(client, subscribed("three", {"event": "busy"}))
    reply = await events_pb2_grpc.EventServiceStub(client.channel).PublishEvent(publish_request("busy"))
    assert [t.workflow_id for t in reply.tasks] == ["three", "two"]
    await client.channel.close()


async def test_a_publish_node_starts_the_workflows_its_event_triggers_once(events_server):
    _, client, _ = events_server
    await create(client, subscribed("downstream", {"event": "report.ready", "input": "{'got': event.data.id}"}))
    announce = {"id": "tell", "publish": {"event": "report.ready", "data": "{'id': input.id}"}}
    park = {"id": "hold", "wait": {"signal": "go"}}  # the task parks after publishing, then resumes
    await create(client, workflow("upstream", {"id": "root", "sequence": {"children": [announce, park]}}))
    task = (await client.tasks.SubmitTask(
        task_pb2.SubmitTaskRequest(workflow_id="upstream", input_data={"id": "r-7"})
    )).task  # fmt: skip
    await parked(client, task.task_id)
    await client.tasks.SignalTask(task_pb2.SignalTaskRequest(task_id=task.task_id, signal="go"))
    done = await wait_done(client, task.task_id)
    told = step_output(done, "root/tell")
    assert [t["workflow_id"] for t in told["tasks"]] == ["downstream"] and told["refused"] == []
    started = await wait_done(client, told["tasks"][0]["task_id"])
    assert result(started) == {"got": "r-7"} and started.owner == done.owner
    assert started.labels["mcp/event-hops"] == "1" and started.labels["mcp/event-id"] == told["event_id"]
    listed = await client.tasks.ListTasks(task_pb2.ListTasksRequest(labels={"mcp/event": "report.ready"}))
    assert len(listed.tasks) == 1  # its resume after the park did not publish again


async def test_a_workflow_that_publishes_the_event_it_starts_on_stops_after_16_links(events_server):
    _, client, events = events_server
    echo_back = {"id": "again", "publish": {"event": "loop"}}
    await create(client, workflow("looping", echo_back, triggers=[{"event": "loop"}]))
    await events.PublishEvent(publish_request("loop", {"n": 1}))
    async with asyncio.timeout(30):
        while True:
            chain = (await client.tasks.ListTasks(task_pb2.ListTasksRequest(workflow_id="looping"))).tasks
            if any(t.status == S.TASK_STATUS_FAILED for t in chain):
                break
            await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)  # nothing more comes
    chain = (await client.tasks.ListTasks(task_pb2.ListTasksRequest(workflow_id="looping"))).tasks
    assert len(chain) == 17  # the one published from outside, then 16 links
    [last] = [t for t in chain if t.status == S.TASK_STATUS_FAILED]
    assert last.labels["mcp/event-hops"] == "16" and "a chain of 16 events" in last.error.message


@pytest.mark.parametrize("in_memory", [60, 0.1], ids=["held", "parked"])
async def test_a_debounce_runs_once_with_the_last_event_after_the_events_stop(server_factory, store_url, in_memory):
    """docs/events.md "Debounce": a trigger, a concurrency key that cancels what is in progress,
    and a sleep first: each event's task replaces the one before, which still sleeps (in memory,
    or parked)."""
    client = client_for(await server_factory(store=store_url, wait_in_memory_seconds=in_memory))
    events = events_pb2_grpc.EventServiceStub(client.channel)
    root = {"id": "root", "sequence": {"children": [
        {"id": "quiet", "sleep": {"duration": "1s"}},
        step("summarize", "echo", "{'doc': input.doc, 'edit': input.edit}"),
    ]}}  # fmt: skip
    trigger = {"event": "doc.edited", "input": "{'doc': event.key, 'edit': event.data.n}"}
    concurrency = {"key": "input.doc", "max_running": 1, "strategy": "CONCURRENCY_STRATEGY_CANCEL_IN_PROGRESS"}
    await create(client, workflow("summary", root, triggers=[trigger], concurrency=concurrency))
    started = []
    for n in range(1, 5):  # four edits of one document, 0.1 s apart; one of another
        started.append((await events.PublishEvent(publish_request("doc.edited", {"n": n}, key="d-1"))).tasks[0])
        await asyncio.sleep(0.1)
    other = (await events.PublishEvent(publish_request("doc.edited", {"n": 9}, key="d-2"))).tasks[0]
    *replaced, last = [await wait_done(client, t.task_id) for t in started]
    assert [t.status for t in replaced] == [S.TASK_STATUS_CANCELLED] * 3
    assert all(t.error.message.startswith("CONCURRENCY_LIMIT: replaced by task") for t in replaced)
    assert last.status == S.TASK_STATUS_COMPLETED and result(last) == {"doc": "d-1", "edit": 4}
    assert result(await wait_done(client, other.task_id)) == {"doc": "d-2", "edit": 9}
    await client.channel.close()
