"""Waits for events, on both stores, with the task held in memory and parked: a published event
reaches the waits for its name with its key (or no key) in the tasks its publisher may see, once
per task however often it is published; a wait's schema refuses one and it waits on; a publish
node wakes a wait in another task; what an index entry outlives (a cancel) is removed."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import grpc
import pytest

from mcp_sdk.proto import events_pb2_grpc, task_pb2, workflow_pb2
from mcp_server.settings import Limits
from tests.conftest import client_for
from tests.helpers import (
    bearer,
    create,
    parked,
    principals_file,
    refused,
    result,
    step,
    step_waiting,
    submit,
    violations,
    wait_done,
    workflow,
)
from tests.helpers import (
    publish_request as publish,
)

pytestmark = pytest.mark.asyncio
S = task_pb2.TaskStatus


def waiting_for(event: str, key: str = "", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"event": event, **extra}
    if key:
        body["key"] = key
    return {"id": "pay", "wait": body}


@pytest.fixture(params=["held", "parked"])
async def served(request, server_factory, store_url):
    """A server whose waiting runs stay in memory (a signal is taken in by the run), or park at
    once (a signal is written to the stored task and resumes it)."""
    running = await server_factory(store=store_url, wait_in_memory_seconds=60 if request.param == "held" else 0.1)
    client = client_for(running)
    yield running, client, events_pb2_grpc.EventServiceStub(client.channel), request.param == "parked"
    await client.channel.close()


async def waiting(client: Any, running: Any, task_id: str, parks: bool) -> None:
    await (parked(client, task_id, running) if parks else step_waiting(client, task_id))


async def test_an_event_reaches_the_wait_with_its_key_once(served):
    running, client, events, parks = served
    await create(client, workflow("order", waiting_for("payment.received", key="input.order_id")))
    first = await submit(client, "order", {"order_id": "o-1"})
    second = await submit(client, "order", {"order_id": "o-2"})
    for task in (first, second):
        await waiting(client, running, task.task_id, parks)

    reply = await events.PublishEvent(publish("payment.received", {"amount": 12}, key="o-1", request_id="pay-1"))
    assert [(w.task_id, w.step_path, w.created) for w in reply.woken] == [(first.task_id, "pay", True)]
    done = await wait_done(client, first.task_id)
    assert done.status == S.TASK_STATUS_COMPLETED and result(done) == {"amount": 12}
    suspended = next(e for e in (await client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=first.task_id))).task.steps)
    assert suspended.path == "pay"

    again = await events.PublishEvent(publish("payment.received", {"amount": 12}, key="o-1", request_id="pay-1"))
    assert not [w for w in again.woken if w.created]  # sent again: nothing new reaches anyone
    unkeyed = await events.PublishEvent(publish("payment.received", {"amount": 5}))
    other = await events.PublishEvent(publish("payment.received", {"amount": 5}, key="o-3"))
    assert not unkeyed.woken and not other.woken  # a keyed wait takes only its key
    status = (await client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=second.task_id))).task.status
    assert status in (S.TASK_STATUS_RUNNING, S.TASK_STATUS_WAITING)

    reply = await events.PublishEvent(publish("payment.received", {"amount": 7}, key="o-2"))
    assert [w.task_id for w in reply.woken] == [second.task_id]
    assert result(await wait_done(client, second.task_id)) == {"amount": 7}


async def test_a_wait_without_a_key_takes_an_event_of_any_key_and_one_event_reaches_a_task_once(served):
    running, client, events, parks = served
    both = {"id": "root", "parallel": {"children": [
        {"id": "a", "wait": {"event": "deploy.done"}},
        {"id": "b", "wait": {"event": "deploy.done"}},
    ]}}  # fmt: skip
    await create(client, workflow("deploys", both))
    task = await submit(client, "deploys")
    await waiting(client, running, task.task_id, parks)
    reply = await events.PublishEvent(publish("deploy.done", {"v": 1}, key="anything"))
    assert [(w.task_id, w.step_path) for w in reply.woken] == [(task.task_id, "root/a")]  # the first by path
    await waiting(client, running, task.task_id, parks)
    reply = await events.PublishEvent(publish("deploy.done", {"v": 2}))
    assert [(w.task_id, w.step_path) for w in reply.woken] == [(task.task_id, "root/b")]
    done = await wait_done(client, task.task_id)
    assert result(done) == {"a": {"v": 1}, "b": {"v": 2}}


async def test_a_wait_s_schema_refuses_an_event_and_it_waits_on(served):
    running, client, events, parks = served
    schema = {"type": "object", "required": ["approved"], "properties": {"approved": {"type": "boolean"}}}
    await create(client, workflow("review", waiting_for("review.done", key="input.doc", schema=schema)))
    task = await submit(client, "review", {"doc": 42})  # an integer key is made a string
    await waiting(client, running, task.task_id, parks)
    reply = await events.PublishEvent(publish("review.done", {"approved": "yes"}, key="42"))
    assert not reply.woken and [r.task_id for r in reply.refused_waits] == [task.task_id]
    assert reply.refused_waits[0].status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "approved" in reply.refused_waits[0].status.message
    reply = await events.PublishEvent(publish("review.done", {"approved": True}, key="42"))
    assert [w.task_id for w in reply.woken] == [task.task_id]
    assert result(await wait_done(client, task.task_id)) == {"approved": True}


async def test_a_wait_for_an_event_times_out_as_a_wait_for_a_signal_does(served):
    _, client, events, _ = served
    await create(client, workflow("late", waiting_for("never", timeout="0.3s", on_timeout="{'late': true}")))
    task = await submit(client, "late")
    done = await wait_done(client, task.task_id)
    assert result(done) == {"late": True}
    assert not (await events.PublishEvent(publish("never"))).woken  # its entry went with the wait


async def test_a_publish_node_wakes_a_wait_in_another_task(served):
    running, client, _, parks = served
    await create(client, workflow("order", waiting_for("invoice.sent", key="input.id")))
    await create(client, workflow("billing", {"id": "send", "publish": {"event": "invoice.sent", "key": "input.id"}}))
    order = await submit(client, "order", {"id": "o-9"})
    await waiting(client, running, order.task_id, parks)
    billing = await wait_done(client, (await submit(client, "billing", {"id": "o-9"})).task_id)
    assert result(billing)["woken"] == [{"task_id": order.task_id, "step_path": "pay"}]
    assert result(await wait_done(client, order.task_id)) == {"id": "o-9"}


async def test_a_cancelled_task_s_wait_is_forgotten_by_the_next_publish(served):
    running, client, events, parks = served
    await create(client, workflow("order", waiting_for("payment.received", key="input.order_id")))
    task = await submit(client, "order", {"order_id": "o-5"})
    await waiting(client, running, task.task_id, parks)
    await client.tasks.CancelTask(task_pb2.CancelTaskRequest(task_id=task.task_id))
    await wait_done(client, task.task_id)
    assert not (await events.PublishEvent(publish("payment.received", key="o-5"))).woken
    store = running.orchestrator.store.waits
    assert await store.event_waiters("event:payment.received", ("o-5", "")) == []


async def test_only_tasks_the_publisher_may_see_take_its_event(server_factory, tmp_path):
    auth = principals_file(tmp_path, {"ada": [], "bob": [], "root": ["admin"]})
    running = await server_factory(auth_file=auth)
    client = client_for(running)
    events = events_pb2_grpc.EventServiceStub(client.channel)
    await client.workflows.CreateWorkflow(
        workflow_pb2.CreateWorkflowRequest(workflow=workflow("order", waiting_for("paid", key="input.id"))),
        metadata=bearer("root"),
    )
    submitted = await client.tasks.SubmitTask(
        task_pb2.SubmitTaskRequest(workflow_id="order", input_data={"id": "x"}), metadata=bearer("ada")
    )
    task_id = submitted.task.task_id
    await step_waiting(client, task_id, bearer("ada"))
    assert not (await events.PublishEvent(publish("paid", key="x"), metadata=bearer("bob"))).woken
    reply = await events.PublishEvent(publish("paid", {"by": "ada"}, key="x"), metadata=bearer("ada"))
    assert [w.task_id for w in reply.woken] == [task_id]
    await client.channel.close()


async def test_bad_waits_for_events_are_refused_naming_the_field(server_factory):
    running = await server_factory()
    client = client_for(running)
    bad = {"id": "root", "sequence": {"children": [
        {"id": "both", "wait": {"signal": "go", "event": "go"}},
        {"id": "name", "wait": {"event": "has space"}},
        {"id": "keyless", "wait": {"signal": "go", "key": "input.id"}},
        {"id": "cel", "wait": {"event": "ok", "key": "input.("}},
        {"id": "pub", "publish": {"event": "ok", "key": "nope.x"}},
    ]}}  # fmt: skip
    refusal = await refused(create(client, workflow("bad", bad)))
    assert refusal.code() == grpc.StatusCode.INVALID_ARGUMENT
    found = violations(refusal)
    assert "not both" in found["workflow.root.sequence.children[0].wait.signal"]
    assert "workflow.root.sequence.children[1].wait.event" in found
    assert "set `event`" in found["workflow.root.sequence.children[2].wait.key"]
    assert "CEL does not compile" in found["workflow.root.sequence.children[3].wait.key"]
    assert "CEL does not compile" in found["workflow.root.sequence.children[4].publish.key"]
    with pytest.raises(grpc.aio.AioRpcError) as long_key:
        await events_pb2_grpc.EventServiceStub(client.channel).PublishEvent(publish("ok", key="k" * 257))
    assert "key" in violations(long_key.value)
    with pytest.raises(grpc.aio.AioRpcError) as by_signal:  # only a publish answers a wait for an event
        await client.tasks.SignalTask(task_pb2.SignalTaskRequest(task_id="t", signal="event:ok"))
    assert by_signal.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "signal" in violations(by_signal.value)
    await create(client, workflow("badkey", waiting_for("ok", key="[1]")))
    failed = await wait_done(client, (await submit(client, "badkey")).task_id)
    assert failed.status == S.TASK_STATUS_FAILED and "`key` gave a list" in failed.error.message
    await client.channel.close()


@pytest.mark.parametrize("redis", ["redis_url", "cluster_url"])
async def test_events_reach_waits_in_every_partition_through_another_replica(server_factory, request, redis):
    """Twelve tasks (their waits spread over the partitions, and over a cluster's masters) wait
    on one replica, some parked and some held; each key published through the other reaches its
    task alone."""
    store = request.getfixturevalue(redis)
    holder = await server_factory(store=store, wait_in_memory_seconds=60)
    other = await server_factory(store=store, wait_in_memory_seconds=0.1)
    clients = [client_for(holder), client_for(other)]
    events = events_pb2_grpc.EventServiceStub(clients[1].channel)
    # the other replica has read that no workflow waits for the name before one does
    assert not (await events.PublishEvent(publish("payment.received", {}, key="o-0"))).woken
    await create(clients[0], workflow("order", waiting_for("payment.received", key="input.order_id")))
    tasks = {}
    for n in range(12):
        tasks[f"o-{n}"] = await submit(clients[n % 2], "order", {"order_id": f"o-{n}"})
    for task in tasks.values():
        await waiting(clients[0], None, task.task_id, parks=False)
    for key, task in tasks.items():
        reply = await events.PublishEvent(publish("payment.received", {"paid": key}, key=key))
        assert [w.task_id for w in reply.woken] == [task.task_id]
    for key, task in tasks.items():
        assert result(await wait_done(clients[0], task.task_id)) == {"paid": key}
    for client in clients:
        await client.channel.close()


def after_a_step(wait: dict[str, Any]) -> dict[str, Any]:
    """A workflow whose wait begins only after a step of 0.6 s: events published first come that early."""
    return {"id": "root", "sequence": {"children": [step("work", "sleep", "{'ms': 600}"), wait]}}


async def test_a_wait_with_a_lookback_takes_an_event_published_before_it_began(events_server):
    _, client, events = events_server
    schema = {"type": "object", "required": ["amount"]}
    looking = waiting_for("paid", key="input.order_id", lookback="30s", schema=schema)
    await create(client, workflow("early", after_a_step(looking)))
    await create(client, workflow("strict", after_a_step(waiting_for("paid", key="input.order_id"))))
    early = await submit(client, "early", {"order_id": "o-1"})
    strict = await submit(client, "strict", {"order_id": "o-1"})
    await events.PublishEvent(publish("paid", {"nope": 1}, key="o-1"))  # kept, but its schema refuses it
    first = await events.PublishEvent(publish("paid", {"amount": 5}, key="o-1", request_id="pay-early"))
    await events.PublishEvent(publish("paid", {"amount": 6}, key="o-1"))
    assert not first.woken  # nobody waited yet
    done = await wait_done(client, early.task_id)
    assert result(done) == {"amount": 5}  # the oldest its schema takes
    assert not [s for s in (await client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=strict.task_id))).task.steps
                if s.status == task_pb2.STEP_STATUS_COMPLETED and s.path == "root/pay"]  # fmt: skip
    again = await events.PublishEvent(publish("paid", {"amount": 5}, key="o-1", request_id="pay-early"))
    assert [w.task_id for w in again.woken] == [strict.task_id]  # the task without lookback waits for new ones


async def test_a_lookback_takes_only_events_of_its_key_within_its_time_and_by_its_owner(server_factory, tmp_path):
    auth = principals_file(tmp_path, {"ada": [], "bob": [], "root": ["admin"]})
    running = await server_factory(auth_file=auth, limits=Limits(event_lookback_seconds=60))
    client = client_for(running)
    events = events_pb2_grpc.EventServiceStub(client.channel)
    short = waiting_for("paid", key="input.id", lookback="0.2s", timeout="2s", on_timeout="{'late': true}")
    await client.workflows.CreateWorkflow(
        workflow_pb2.CreateWorkflowRequest(workflow=workflow("short", after_a_step(short))), metadata=bearer("root")
    )
    await events.PublishEvent(publish("paid", {"by": "bob"}, key="x"), metadata=bearer("bob"))  # not ada's
    await events.PublishEvent(publish("paid", {"by": "ada", "key": "y"}, key="y"), metadata=bearer("ada"))
    await events.PublishEvent(publish("paid", {"by": "ada"}, key="x"), metadata=bearer("ada"))  # 0.6 s early
    submitted = await client.tasks.SubmitTask(
        task_pb2.SubmitTaskRequest(workflow_id="short", input_data={"id": "x"}), metadata=bearer("ada")
    )
    task_id = submitted.task.task_id
    done = (await client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=task_id), metadata=bearer("ada"))).task
    async with asyncio.timeout(10):
        while done.status != S.TASK_STATUS_COMPLETED:
            await asyncio.sleep(0.05)
            done = (await client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=task_id), metadata=bearer("ada"))).task
    assert result(done) == {"late": True}  # bob's, another key's, and ada's before the lookback: none taken
    await client.channel.close()


async def test_a_wait_without_a_key_looks_back_at_events_of_any_key(events_server):
    _, client, events = events_server
    await create(client, workflow("any", after_a_step(waiting_for("deploy.done", lookback="30s"))))
    task = await submit(client, "any")
    await events.PublishEvent(publish("deploy.done", {"v": 3}, key="svc-a"))
    assert result(await wait_done(client, task.task_id)) == {"v": 3}


async def test_a_lookback_longer_than_the_server_allows_is_refused(server_factory):
    client = client_for(await server_factory(limits=Limits(event_lookback_seconds=5)))
    long = await refused(create(client, workflow("long", waiting_for("paid", lookback="10s"))))
    assert "MCP_LIMIT_EVENT_LOOKBACK_SECONDS" in violations(long)["workflow.root.wait.lookback"]
    no_event = await refused(create(client, workflow("sig", {"id": "w", "wait": {"signal": "go", "lookback": "10s"}})))
    assert "set `event`" in violations(no_event)["workflow.root.wait.lookback"]
    await client.channel.close()


async def test_an_event_published_around_the_time_its_wait_begins_is_taken_once_whichever_comes_first(events_server):
    """60 tasks, each a step of 0-40 ms then a wait with a lookback; each task's event published
    0-40 ms after its submit, so some come before the wait and some after, some as it begins: every
    task takes its own event, once."""
    _, client, events = events_server
    looking = waiting_for("race.paid", key="input.id", lookback="30s", timeout="20s")
    race = {"id": "root", "sequence": {"children": [step("work", "sleep", "{'ms': input.ms}"), looking]}}
    await create(client, workflow("race", race))
    rng = random.Random(30)

    async def one(n: int) -> str:
        task = await submit(client, "race", {"id": f"r-{n}", "ms": rng.uniform(0, 40)})
        await asyncio.sleep(rng.uniform(0, 0.04))
        await events.PublishEvent(publish("race.paid", {"n": n}, key=f"r-{n}", request_id=f"race-{n}"))
        return task.task_id

    task_ids = await asyncio.gather(*(one(n) for n in range(60)))
    for n, task_id in enumerate(task_ids):
        done = await wait_done(client, task_id)
        assert done.status == S.TASK_STATUS_COMPLETED and result(done) == {"n": n}, (n, done.error)
        events_of = client.tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=task_id))
        taken = [e async for e in events_of if e.type == task_pb2.TASK_EVENT_TYPE_SIGNAL_RECEIVED]
        assert len(taken) == 1


async def test_by_default_a_lookback_works_and_only_events_some_workflow_looks_back_for_are_kept(events_server):
    _, client, events = events_server
    await events.PublishEvent(publish("unwatched", {"n": 1}, key="k"))  # no workflow waits for it yet
    late = waiting_for("unwatched", key="input.id", lookback="60s", timeout="1s", on_timeout="{'late': true}")
    await create(client, workflow("late", late))
    await create(client, workflow("early", after_a_step(waiting_for("watched", key="input.id", lookback="60s"))))
    late_task = await submit(client, "late", {"id": "k"})
    early_task = await submit(client, "early", {"id": "k"})
    await events.PublishEvent(publish("watched", {"n": 2}, key="k"))  # before its wait began: kept for it
    assert result(await wait_done(client, early_task.task_id)) == {"n": 2}
    assert result(await wait_done(client, late_task.task_id)) == {"late": True}  # not kept: nobody looked back


async def test_a_publish_looks_for_waits_only_when_some_version_waits_for_its_name(events_server):
    running, client, events = events_server
    store = running.orchestrator.events.waits.waits
    looked: list[str] = []
    event_waiters = store.event_waiters

    async def counted(signal: str, keys: Any) -> Any:
        looked.append(signal)
        return await event_waiters(signal, keys)

    store.event_waiters = counted
    await create(client, workflow("other", waiting_for("shipped")))
    await events.PublishEvent(publish("paid", {}, key="o-1"))
    assert looked == []
    await create(client, workflow("pay", waiting_for("paid", key="input.id")))
    await events.PublishEvent(publish("paid", {}, key="o-1"))
    assert looked == ["event:paid"]
    await client.workflows.DeleteWorkflow(workflow_pb2.DeleteWorkflowRequest(workflow_id="pay"))
    await events.PublishEvent(publish("paid", {}, key="o-1"))  # its tasks may still wait
    assert looked == ["event:paid", "event:paid"]


async def test_events_are_kept_for_the_longest_lookback_waited_with_at_most_what_the_server_allows(
    server_factory, redis_url
):
    first = await server_factory(store=redis_url)
    client = client_for(first)
    await create(client, workflow("pay", waiting_for("paid", key="input.id", lookback="30s")))
    await create(client, workflow("pay2", waiting_for("paid", lookback="20s")))
    kept = first.orchestrator.store.kept_events
    events = events_pb2_grpc.EventServiceStub(client.channel)
    await events.PublishEvent(publish("paid", {}, key="o-1"))
    assert 25_000 < await kept.conn.r.pttl(kept._key("paid", "k:o-1")) <= 30_000
    # a version that looks back further, created after this replica learnt the name's lookback
    await create(client, workflow("pay", waiting_for("paid", key="input.id", lookback="50s")))
    await events.PublishEvent(publish("paid", {}, key="o-3"))
    assert 45_000 < await kept.conn.r.pttl(kept._key("paid", "k:o-3")) <= 50_000
    await client.channel.close()
    lowered = await server_factory(store=redis_url, limits=Limits(event_lookback_seconds=5))
    client = client_for(lowered)
    await events_pb2_grpc.EventServiceStub(client.channel).PublishEvent(publish("paid", {}, key="o-2"))
    assert 0 < await kept.conn.r.pttl(kept._key("paid", "k:o-2")) <= 5_000
    await client.channel.close()


async def test_a_wait_takes_only_an_event_its_condition_holds_for_and_others_pass_it_by(served):
    running, client, events, parks = served
    bid = waiting_for("bid", key="input.lot", condition="event.data.amount >= input.reserve && event.labels.m == 'eu'")
    await create(client, workflow("auction", bid))
    task = await submit(client, "auction", {"lot": "l-1", "reserve": 10})
    await waiting(client, running, task.task_id, parks)
    for data, market in (({"amount": 5}, "eu"), ({"amount": 50}, "us")):
        reply = await events.PublishEvent(publish("bid", data, key="l-1", labels={"m": market}))
        assert not reply.woken and not reply.refused_waits  # passed by: not taken, not refused
    taken = await events.PublishEvent(publish("bid", {"amount": 12}, key="l-1", labels={"m": "eu"}))
    assert [w.task_id for w in taken.woken] == [task.task_id]
    assert result(await wait_done(client, task.task_id)) == {"amount": 12}


async def test_a_condition_that_fails_refuses_the_event_and_the_wait_waits_on(served):
    running, client, events, parks = served
    await create(client, workflow("strict", waiting_for("bid", condition="event.data.amount > 1")))
    task = await submit(client, "strict")
    await waiting(client, running, task.task_id, parks)
    reply = await events.PublishEvent(publish("bid", {"price": 3}))  # no `amount`: the condition errs
    assert not reply.woken and [r.task_id for r in reply.refused_waits] == [task.task_id]
    assert reply.refused_waits[0].status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "amount" in reply.refused_waits[0].status.message
    assert [w.task_id for w in (await events.PublishEvent(publish("bid", {"amount": 3}))).woken] == [task.task_id]
    assert result(await wait_done(client, task.task_id)) == {"amount": 3}


async def test_an_event_goes_to_the_task_s_wait_whose_condition_holds_not_the_first_by_path(served):
    running, client, events, parks = served
    both = {"id": "root", "parallel": {"children": [
        {"id": "small", "wait": {"event": "bid", "condition": "event.data.amount < 10"}},
        {"id": "large", "wait": {"event": "bid", "condition": "event.data.amount >= 10"}},
    ]}}  # fmt: skip
    await create(client, workflow("split", both))
    task = await submit(client, "split")
    await waiting(client, running, task.task_id, parks)
    reply = await events.PublishEvent(publish("bid", {"amount": 20}))
    assert [(w.task_id, w.step_path) for w in reply.woken] == [(task.task_id, "root/large")]
    await waiting(client, running, task.task_id, parks)
    reply = await events.PublishEvent(publish("bid", {"amount": 3}))
    assert [(w.task_id, w.step_path) for w in reply.woken] == [(task.task_id, "root/small")]
    assert result(await wait_done(client, task.task_id)) == {"small": {"amount": 3}, "large": {"amount": 20}}


async def test_a_lookback_takes_the_oldest_kept_event_its_condition_holds_for(events_server):
    _, client, events = events_server
    looking = waiting_for("bid", key="input.lot", lookback="60s", condition="event.data.amount >= input.reserve")
    await create(client, workflow("early", after_a_step(looking)))
    task = await submit(client, "early", {"lot": "l-9", "reserve": 10})
    for amount in (4, 11, 15):  # all published before the wait begins
        await events.PublishEvent(publish("bid", {"amount": amount}, key="l-9"))
    assert result(await wait_done(client, task.task_id)) == {"amount": 11}


async def test_a_condition_is_for_a_wait_for_an_event_and_reads_only_the_event_and_the_input(server_factory):
    client = client_for(await server_factory())
    no_event = await refused(
        create(client, workflow("sig", {"id": "w", "wait": {"signal": "go", "condition": "true"}}))
    )
    assert "set `event`" in violations(no_event)["workflow.root.wait.condition"]
    steps = await refused(
        create(client, workflow("st", {"id": "w", "wait": {"event": "e", "condition": "steps.x.ok"}}))
    )
    assert "steps" in violations(steps)["workflow.root.wait.condition"]
    await client.channel.close()


async def test_an_event_ends_a_running_branch_through_a_race_with_a_wait_for_it(served):
    """docs/events.md "Cancel on an event": a parallel node that any branch ends, one branch the
    work and the other a wait for the event that calls the work off."""
    _, client, events, _ = served
    race = {"id": "root", "parallel": {"join": "JOIN_POLICY_ANY", "children": [
        step("work", "sleep", "{'ms': 30000}"),
        {"id": "called_off", "wait": {"event": "order.cancelled", "key": "input.order_id", "lookback": "3600s"}},
    ]}}  # fmt: skip
    await create(client, workflow("fulfil", race))
    task = await submit(client, "fulfil", {"order_id": "o-7"})
    await step_waiting(client, task.task_id)
    reply = await events.PublishEvent(publish("order.cancelled", {"by": "customer"}, key="o-7"))
    assert [w.task_id for w in reply.woken] == [task.task_id]
    early = await submit(client, "fulfil", {"order_id": "o-8"})
    await events.PublishEvent(publish("order.cancelled", {"by": "shop"}, key="o-8"))  # as it is queued or starts
    for task_id, by in ((task.task_id, "customer"), (early.task_id, "shop")):
        done = await wait_done(client, task_id, timeout=10)
        assert result(done) == {"called_off": {"by": by}}
        work = next(s for s in done.steps if s.path == "root/work")
        assert work.status == task_pb2.STEP_STATUS_CANCELLED
