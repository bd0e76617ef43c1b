"""Tasks an event calls off (Workflow.cancel_on), on both stores: a published event with a task's
key cancels it whether it runs, waits (held or parked) or is still queued, cleaning up first; not
one of another key, not one its condition turns away, not one the publisher may not see, not one
submitted after the event; sent again it cancels nothing more; bad definitions and keys are refused
naming the field."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from mcp_sdk.proto import events_pb2_grpc, task_pb2, workflow_pb2
from mcp_server.settings import Limits
from tests.conftest import client_for
from tests.helpers import (
    bearer,
    create,
    error_reason,
    parked,
    principals_file,
    refused,
    step,
    step_states,
    submit,
    violations,
    wait_done,
    workflow,
)
from tests.helpers import publish_request as publish
from tests.integration.test_cancel_cleanup import on_cancel, started

pytestmark = pytest.mark.asyncio
S = task_pb2.TaskStatus
SLOW = "{'ms': 10000}"
CALLED_OFF = [{"event": "order.cancelled", "key": "input.order"}]


def order_flow(**extra: Any) -> workflow_pb2.Workflow:
    body = {"id": "b", "sequence": {"children": [step("reserve", "echo"), step("ship", "sleep", SLOW)]}}
    root = on_cancel("r", body, step("release", "echo", "{'why': error.message}"))
    return workflow("order", root, cancel_on=extra.pop("cancel_on", CALLED_OFF), **extra)


async def test_an_event_with_a_task_s_key_cancels_it_after_its_clean_up(events_server):
    _running, client, events = events_server
    await create(client, order_flow())
    first = await submit(client, "order", {"order": "o-1"})
    second = await submit(client, "order", {"order": "o-2"})
    await started(client, first.task_id, "r/b/ship")
    await started(client, second.task_id, "r/b/ship")

    reply = await events.PublishEvent(publish("order.cancelled", {"by": "customer"}, key="o-1", request_id="c-1"))
    assert list(reply.cancelled) == [first.task_id]
    done = await wait_done(client, first.task_id)
    assert done.status == S.TASK_STATUS_CANCELLED
    assert done.error.message == "CANCEL_ON: event 'order.cancelled' (c-1)"
    release = step_states(done)["r/release"]
    assert release.status == task_pb2.STEP_STATUS_COMPLETED
    assert release.output.struct_value["why"] == "CANCEL_ON: event 'order.cancelled' (c-1)"
    assert labels_of(done) == {"mcp/cancel-on/": "o-1"}

    again = await events.PublishEvent(publish("order.cancelled", key="o-1", request_id="c-1"))
    assert not again.cancelled  # sent again: it is cancelled already
    other = await events.PublishEvent(publish("order.cancelled", key="o-9"))
    keyless = await events.PublishEvent(publish("order.cancelled"))
    assert not other.cancelled and not keyless.cancelled
    still = (await client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=second.task_id))).task
    assert still.status == S.TASK_STATUS_RUNNING
    await client.tasks.CancelTask(task_pb2.CancelTaskRequest(task_id=second.task_id))


async def test_a_parked_task_is_called_off_and_cleans_up(parking_server):
    running, client = parking_server
    events = events_pb2_grpc.EventServiceStub(client.channel)
    waits = {"id": "r", "recover": {"on_cancel": True, "body": {"id": "ok", "wait": {"signal": "ok"}},
                                    "handler": step("undo", "echo")}}  # fmt: skip
    await create(client, workflow("held", waits, cancel_on=CALLED_OFF))
    task = await submit(client, "held", {"order": "o-1"})
    await parked(client, task.task_id, running)
    reply = await events.PublishEvent(publish("order.cancelled", key="o-1"))
    assert list(reply.cancelled) == [task.task_id]
    done = await wait_done(client, task.task_id)
    assert done.status == S.TASK_STATUS_CANCELLED
    assert step_states(done)["r/undo"].status == task_pb2.STEP_STATUS_COMPLETED


async def test_a_queued_task_is_called_off_before_it_starts(server_factory, store_url):
    running = await server_factory(store=store_url, limits=Limits(max_tasks_in_flight=0))  # it runs nothing
    client = client_for(running)
    events = events_pb2_grpc.EventServiceStub(client.channel)
    await create(client, order_flow())
    queued = await submit(client, "order", {"order": "o-3"})
    reply = await events.PublishEvent(publish("order.cancelled", key="o-3"))
    assert list(reply.cancelled) == [queued.task_id]
    done = (await client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=queued.task_id))).task
    assert done.status == S.TASK_STATUS_CANCELLED and not done.steps  # never started: nothing to clean up
    assert done.error.message.startswith("CANCEL_ON: event 'order.cancelled'")
    await client.channel.close()


async def test_a_condition_a_keyless_cancel_on_and_an_event_before_the_task(events_server):
    _running, client, events = events_server
    cancel_on = [{"event": "shop.closed", "condition": "event.data.region == input.region"}]
    await create(client, order_flow(cancel_on=cancel_on))
    early = await events.PublishEvent(publish("shop.closed", {"region": "eu"}))
    assert not early.cancelled
    eu = await submit(client, "order", {"order": "o-1", "region": "eu"})
    us = await submit(client, "order", {"order": "o-2", "region": "us"})
    await started(client, eu.task_id, "r/b/ship")
    await started(client, us.task_id, "r/b/ship")  # the event before them called neither off
    reply = await events.PublishEvent(publish("shop.closed", {"region": "eu"}, key="any-key"))
    assert list(reply.cancelled) == [eu.task_id]
    assert (await wait_done(client, eu.task_id)).status == S.TASK_STATUS_CANCELLED
    reply = await events.PublishEvent(publish("shop.closed", {"region": "us"}))
    assert list(reply.cancelled) == [us.task_id]
    assert (await wait_done(client, us.task_id)).status == S.TASK_STATUS_CANCELLED


async def test_only_tasks_the_publisher_may_see_are_called_off(server_factory, tmp_path):
    auth = principals_file(tmp_path, {"ada": [], "bob": [], "root": ["admin"]})
    running = await server_factory(auth_file=auth)
    client = client_for(running)
    events = events_pb2_grpc.EventServiceStub(client.channel)
    await client.workflows.CreateWorkflow(
        workflow_pb2.CreateWorkflowRequest(workflow=order_flow()), metadata=bearer("root")
    )
    submitted = await client.tasks.SubmitTask(
        task_pb2.SubmitTaskRequest(workflow_id="order", input_data={"order": "x"}), metadata=bearer("ada")
    )
    task_id = submitted.task.task_id
    assert not (await events.PublishEvent(publish("order.cancelled", key="x"), metadata=bearer("bob"))).cancelled
    reply = await events.PublishEvent(publish("order.cancelled", key="x"), metadata=bearer("ada"))
    assert list(reply.cancelled) == [task_id]
    await client.channel.close()


async def test_bad_cancel_ons_and_keys_are_refused_naming_the_field(events_server):
    _running, client, _events = events_server
    bad = [
        {"event": "has space"},
        {"event": "a.b", "key": "event.key"},
        {"event": "a.b"},
        {"event": "c.d", "condition": "steps.x"},
        {"event": "go"},
    ]
    refusal = await refused(
        create(client, workflow("bad", step("s", "echo"), cancel_on=bad, triggers=[{"event": "go"}]))
    )
    assert refusal.code() == grpc.StatusCode.INVALID_ARGUMENT
    found = violations(refusal)
    assert "workflow.cancel_on[0].event" in found
    assert "CEL does not compile" in found["workflow.cancel_on[1].key"]
    assert "named twice" in found["workflow.cancel_on[2].event"]
    assert "CEL does not compile" in found["workflow.cancel_on[3].condition"]
    assert "starts the workflow" in found["workflow.cancel_on[4].event"]
    assert "at most 4" in found["workflow.cancel_on"]

    await create(client, workflow("keyed", step("s", "echo"), cancel_on=[{"event": "x.y", "key": "input.order"}]))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await submit(client, "keyed", {"order": {"nested": True}})
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_reason(caught.value) == "BAD_CANCEL_ON_KEY"
    assert "cancel_on[0]: `key` gave a dict, not a string" in violations(caught.value)["input_data"]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await submit(client, "keyed", {})
    assert "does not evaluate" in violations(caught.value)["input_data"]


def labels_of(task: task_pb2.Task) -> dict[str, str]:
    """The task's cancel_on labels, by their prefix."""
    return {key[: key.rindex("/") + 1]: value for key, value in task.labels.items() if key.startswith("mcp/cancel")}


async def test_a_rerun_is_called_off_by_the_cancel_on_of_the_version_it_runs(events_server):
    _running, client, events = events_server
    await create(client, workflow("quick", step("s", "echo")))
    done = await wait_done(client, (await submit(client, "quick", {"order": "o-7"})).task_id)
    slow = step("s", "sleep", SLOW)
    version = (await create(client, workflow("quick", slow, cancel_on=CALLED_OFF))).version
    rerun = await client.tasks.RerunTask(
        task_pb2.RerunTaskRequest(task_id=done.task_id, workflow_version=version, from_step_path="s")
    )
    assert labels_of(rerun.task) == {"mcp/cancel-on/": "o-7"}
    await started(client, rerun.task.task_id, "s")
    reply = await events.PublishEvent(publish("order.cancelled", key="o-7"))
    assert list(reply.cancelled) == [rerun.task.task_id]
    assert (await wait_done(client, rerun.task.task_id)).status == S.TASK_STATUS_CANCELLED
