"""A cancelled task's clean-up (RecoverNode.on_cancel), on both stores, against the testkit plugin
process: the handlers of the recover nodes a cancel stopped run (inner before outer, branches side
by side, a parked task's too), the task then ends CANCELLED saying why; a node whose body had not
begun, or without on_cancel, runs none; a clean-up is bounded, and a second cancel waits for it."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from mcp_sdk.proto import task_pb2
from mcp_server.settings import Limits
from tests.conftest import client_for
from tests.helpers import (
    create,
    events,
    parked,
    plugin_stats,
    seq,
    step,
    step_states,
    submit,
    violations,
    wait_done,
    workflow,
)
from tests.integration.test_cancel_requests import user_without_pubsub
from tests.integration.test_waits import other_replica

pytestmark = pytest.mark.asyncio
S = task_pb2.TaskStatus
E = task_pb2.TaskEventType
SLOW = "{'ms': 10000}"
REFUND = "{'why': error.code, 'said': error.message, 'where': error.step_path, 'order': input.topic}"


def on_cancel(node_id: str, body: dict[str, Any], handler: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"id": node_id, "recover": {"body": body, "handler": handler, "on_cancel": True, **extra}}


async def started(client: Any, task_id: str, *paths: str) -> None:
    """Once every step in `paths` has started."""
    waiting = set(paths)
    async with asyncio.timeout(10):
        async for event in client.tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=task_id)):
            if event.type == E.TASK_EVENT_TYPE_STEP_STARTED:
                waiting.discard(event.step_path)
                if not waiting:
                    return


async def cancel(client: Any, task_id: str, reason: str = "changed their mind") -> task_pb2.Task:
    reply = await client.tasks.CancelTask(task_pb2.CancelTaskRequest(task_id=task_id, reason=reason))
    return reply.task


async def test_a_cancel_runs_the_handler_of_the_node_it_stopped_then_the_task_ends_cancelled(parking_server, testkit):
    running, client = parking_server
    saga = seq("saga", step("charge", "sleep", SLOW), step("ship", "echo"))
    root = seq(
        "root", step("reserve", "echo"), on_cancel("r", saga, step("refund", "echo", REFUND)), step("after", "echo")
    )
    await create(client, workflow("order", root))
    task = await submit(client, "order", {"topic": "o-1"})
    await started(client, task.task_id, "root/r/saga/charge")

    answered = await cancel(client, task.task_id)  # answers once the clean-up has run
    assert answered.status == S.TASK_STATUS_CANCELLED
    done = await wait_done(client, task.task_id)
    assert done.status == S.TASK_STATUS_CANCELLED
    assert done.error.code == grpc.StatusCode.CANCELLED.value[0] and done.error.message == "changed their mind"
    assert done.cancel_request.reason == "changed their mind" and done.cancel_request.HasField("time")
    assert done.cancel_request.outcome == "done"
    counted = running.orchestrator.metrics.registry.get_sample_value
    assert counted("mcp_task_clean_ups_total", {"workflow": "order", "outcome": "done"}) == 1
    states = step_states(done)
    refund = states["root/r/refund"]
    assert refund.status == task_pb2.STEP_STATUS_COMPLETED
    assert refund.output.struct_value["why"] == "CANCELLED"
    assert refund.output.struct_value["said"] == "changed their mind"
    assert refund.output.struct_value["where"] == "root/r/saga/charge"
    assert refund.output.struct_value["order"] == "o-1"
    assert states["root/r/saga/charge"].status == task_pb2.STEP_STATUS_CANCELLED
    assert states["root/r"].status == task_pb2.STEP_STATUS_CANCELLED
    assert "root/r/saga/ship" not in states and "root/after" not in states
    calls = (await plugin_stats(testkit))["calls"]
    assert calls[f"{task.task_id}/root/r/refund/echo"] == 1

    log = [(e.type, e.step_path) for e in await events(client, task.task_id)]
    cleaning = log.index((E.TASK_EVENT_TYPE_CLEANING_UP, ""))
    assert log[cleaning + 1 :] == [
        (E.TASK_EVENT_TYPE_STEP_STARTED, "root/r/refund"),
        (E.TASK_EVENT_TYPE_STEP_COMPLETED, "root/r/refund"),
        (E.TASK_EVENT_TYPE_CANCELLED, ""),
    ]


async def test_a_node_whose_body_had_not_begun_or_without_on_cancel_runs_no_handler(parking_server, testkit):
    _, client = parking_server
    root = seq("root", step("first", "sleep", SLOW), on_cancel("r", step("a", "echo"), step("undo", "echo")))
    await create(client, workflow("early", root))
    task = await submit(client, "early")
    await started(client, task.task_id, "root/first")
    done = await cancel(client, task.task_id)
    assert done.status == S.TASK_STATUS_CANCELLED and not done.HasField("cancel_request")
    assert [p for p in step_states(done)] == ["root", "root/first"]
    assert E.TASK_EVENT_TYPE_CLEANING_UP not in [e.type for e in await events(client, task.task_id)]

    plain = {"id": "r", "recover": {"body": step("slow", "sleep", SLOW), "handler": step("undo", "echo")}}
    await create(client, workflow("plain", plain))
    task = await submit(client, "plain")
    await started(client, task.task_id, "r/slow")
    done = await cancel(client, task.task_id)
    assert done.status == S.TASK_STATUS_CANCELLED and "r/undo" not in step_states(done)


async def test_inner_handlers_end_before_outer_ones_and_branches_clean_up_side_by_side(parking_server, testkit):
    _, client = parking_server
    inner = on_cancel("inner", step("work", "sleep", SLOW), step("undo-inner", "sleep", "{'ms': 300}"))
    left = on_cancel("left", seq("steps", step("done-first", "echo"), inner), step("undo-left", "echo"))
    right = on_cancel("right", step("other", "sleep", SLOW), step("undo-right", "sleep", "{'ms': 300}"))
    # fail_fast: a branch ending CANCELLED in the walk must not stop the other's clean-up
    root = {"id": "p", "parallel": {"children": [left, right], "fail_fast": True}}
    await create(client, workflow("nested", root))
    task = await submit(client, "nested")
    await started(client, task.task_id, "p/left/steps/inner/work", "p/right/other")
    done = await cancel(client, task.task_id)

    assert done.status == S.TASK_STATUS_CANCELLED
    states = step_states(done)
    for path in ("p/left/steps/inner/undo-inner", "p/left/undo-left", "p/right/undo-right"):
        assert states[path].status == task_pb2.STEP_STATUS_COMPLETED, path
    inner_end = states["p/left/steps/inner/undo-inner"].end_time.ToNanoseconds()
    assert states["p/left/undo-left"].start_time.ToNanoseconds() >= inner_end
    # the two branches' 300 ms handlers overlapped: the right one began before the inner one ended
    assert states["p/right/undo-right"].start_time.ToNanoseconds() < inner_end
    assert states["p/left/steps/done-first"].status == task_pb2.STEP_STATUS_COMPLETED
    calls = (await plugin_stats(testkit))["calls"]
    assert calls[f"{task.task_id}/p/left/steps/done-first/echo"] == 1  # what completed is not run again


async def test_a_parked_task_cancelled_runs_its_clean_up(parking_server, testkit):
    running, client = parking_server
    body = seq("b", step("book", "echo"), {"id": "approve", "wait": {"signal": "approve"}})
    root = on_cancel("r", body, step("release", "echo", "{'where': error.step_path}"))
    await create(client, workflow("held", root))
    task = await submit(client, "held")
    await parked(client, task.task_id, running)

    done = await cancel(client, task.task_id, "nobody approved")
    assert done.status == S.TASK_STATUS_CANCELLED and done.error.message == "nobody approved"
    states = step_states(done)
    assert result_of(states["r/release"]) == {"where": "r/b/approve"}
    assert states["r/b/approve"].status == task_pb2.STEP_STATUS_CANCELLED
    calls = (await plugin_stats(testkit))["calls"]
    assert calls[f"{task.task_id}/r/b/book/echo"] == 1 and calls[f"{task.task_id}/r/release/echo"] == 1


async def test_a_handler_that_fails_leaves_the_task_cancelled_saying_so(parking_server):
    _, client = parking_server
    failing = step("undo", "fail", "{'code': 'UNAVAILABLE', 'message': 'refunds are down'}", retry={"max_attempts": 1})
    await create(client, workflow("worse", on_cancel("r", step("slow", "sleep", SLOW), failing)))
    task = await submit(client, "worse")
    await started(client, task.task_id, "r/slow")
    done = await cancel(client, task.task_id, "stop")
    assert done.status == S.TASK_STATUS_CANCELLED
    assert done.error.message.startswith("stop; its clean-up failed: r/undo:")
    assert done.cancel_request.outcome == "failed"
    assert "refunds are down" in done.error.message
    assert step_states(done)["r/undo"].status == task_pb2.STEP_STATUS_FAILED


async def test_a_clean_up_past_its_limit_is_cut_short(server_factory, store_url):
    running = await server_factory(store=store_url, limits=Limits(cancel_cleanup_seconds=0.5))
    client = client_for(running)
    await create(client, workflow("long", on_cancel("r", step("slow", "sleep", SLOW), step("undo", "sleep", SLOW))))
    task = await submit(client, "long")
    await started(client, task.task_id, "r/slow")
    done = await cancel(client, task.task_id, "stop")
    assert done.status == S.TASK_STATUS_CANCELLED
    assert done.error.message == "stop; its clean-up was cut short after 0.5s"
    assert done.cancel_request.outcome == "cut_short"
    counted = running.orchestrator.metrics.registry.get_sample_value
    assert counted("mcp_task_clean_ups_total", {"workflow": "long", "outcome": "cut_short"}) == 1
    assert step_states(done)["r/undo"].status == task_pb2.STEP_STATUS_CANCELLED
    await client.channel.close()


async def test_a_second_cancel_during_the_clean_up_waits_for_it(parking_server, testkit):
    _, client = parking_server
    await create(
        client, workflow("twice", on_cancel("r", step("slow", "sleep", SLOW), step("undo", "sleep", "{'ms': 500}")))
    )
    task = await submit(client, "twice")
    await started(client, task.task_id, "r/slow")
    first = asyncio.ensure_future(cancel(client, task.task_id, "first"))
    await started_cleaning_up(client, task.task_id)
    second = await cancel(client, task.task_id, "second")
    assert second.status == S.TASK_STATUS_CANCELLED and (await first).status == S.TASK_STATUS_CANCELLED
    assert second.error.message == "first" and step_states(second)["r/undo"].status == task_pb2.STEP_STATUS_COMPLETED
    calls = (await plugin_stats(testkit))["calls"]
    assert calls[f"{task.task_id}/r/undo/sleep"] == 1


async def test_a_task_its_concurrency_key_replaces_cleans_up_first(parking_server, testkit):
    _, client = parking_server
    latest = {"key": "input.doc", "max_running": 1, "strategy": "CONCURRENCY_STRATEGY_CANCEL_IN_PROGRESS"}
    node = on_cancel("r", step("render", "sleep", SLOW), step("discard", "echo", "{'why': error.message}"))
    await create(client, workflow("latest", node, concurrency=latest))
    first = await submit(client, "latest", {"doc": "d-1"})
    await started(client, first.task_id, "r/render")
    second = await submit(client, "latest", {"doc": "d-1"})
    replaced = await wait_done(client, first.task_id)
    assert replaced.status == S.TASK_STATUS_CANCELLED
    assert replaced.error.message.startswith("CONCURRENCY_LIMIT: replaced by task " + second.task_id)
    why = step_states(replaced)["r/discard"].output.struct_value["why"]
    assert why == replaced.error.message
    await client.tasks.CancelTask(task_pb2.CancelTaskRequest(task_id=second.task_id))


async def test_a_handler_that_waits_or_sleeps_is_refused(parking_server):
    _, client = parking_server
    handler = seq("h", {"id": "ask", "wait": {"signal": "ok"}}, {"id": "nap", "sleep": {"duration": "1s"}})
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await create(client, workflow("refused", on_cancel("r", step("a", "echo"), handler)))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    found = violations(caught.value)
    assert "cannot be in an on_cancel handler" in found["workflow.root.recover.handler.sequence.children[0]"]
    assert "a sleep node" in found["workflow.root.recover.handler.sequence.children[1]"]
    # nor through a subworkflow it calls
    await create(client, workflow("asks", {"id": "ask", "wait": {"signal": "ok"}}))
    called = {"id": "call", "subworkflow": {"workflow_id": "asks", "version": "1"}}
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await create(client, workflow("refused-too", on_cancel("r", step("a", "echo"), called)))
    found = violations(caught.value)
    assert (
        "a wait node cannot be in an on_cancel handler"
        in found["workflow.root.recover.handler.subworkflow.definition.root"]
    )
    # without on_cancel the same handler may wait (docs/workflows.md: a wait for a person)
    plain = {"id": "r", "recover": {"body": step("a", "echo"), "handler": handler}}
    assert (await create(client, workflow("allowed", plain))).version == 1


async def started_cleaning_up(client: Any, task_id: str) -> None:
    async with asyncio.timeout(10):
        async for event in client.tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=task_id)):
            if event.type == E.TASK_EVENT_TYPE_CLEANING_UP:
                return


def result_of(state: task_pb2.StepState) -> Any:
    from google.protobuf import json_format

    return json_format.MessageToDict(state.output)


async def test_a_cancel_through_another_replica_waits_for_the_clean_up_on_the_one_running_it(
    server_factory, redis_url, testkit
):
    replicas = [await server_factory(store=redis_url), await server_factory(store=redis_url)]
    clients = [client_for(r) for r in replicas]
    node = on_cancel("r", step("slow", "sleep", SLOW), step("undo", "sleep", "{'ms': 400}"))
    await create(clients[0], workflow("elsewhere", node))
    task = await submit(clients[0], "elsewhere")
    other = await other_replica(clients, replicas, task.task_id)
    await started(other, task.task_id, "r/slow")
    done = await cancel(other, task.task_id, "from the other replica")
    assert done.status == S.TASK_STATUS_CANCELLED and done.error.message == "from the other replica"
    undo = step_states(done)["r/undo"]
    assert undo.status == task_pb2.STEP_STATUS_COMPLETED
    assert undo.end_time.ToNanoseconds() - undo.start_time.ToNanoseconds() >= 400_000_000
    calls = (await plugin_stats(testkit))["calls"]
    assert calls[f"{task.task_id}/r/undo/sleep"] == 1
    for client in clients:
        await client.channel.close()


async def test_a_clean_up_does_not_hold_up_the_cancels_a_replica_finds_by_polling(server_factory, redis_url):
    """Where the store cannot tell a replica of a cancel (a Redis user without pub/sub), its poll
    finds the requests: one task's clean-up must not hold up the cancel of another found meanwhile."""
    async with user_without_pubsub(redis_url) as store:
        holder = await server_factory(store=store, cancel_poll_seconds=0.1)
        api_only = await server_factory(store=store, limits=Limits(max_tasks_in_flight=0))
        client, own = client_for(api_only), client_for(holder)
        undo = on_cancel("r", step("slow", "sleep", SLOW), step("undo", "sleep", "{'ms': 2000}"))
        await create(client, workflow("slow-undo", undo))
        await create(client, workflow("napping", step("nap", "sleep", SLOW)))
        cleaning = await submit(client, "slow-undo")
        napping = await submit(client, "napping")
        await started(own, cleaning.task_id, "r/slow")
        await started(own, napping.task_id, "nap")
        first = asyncio.ensure_future(cancel(client, cleaning.task_id, "first"))
        await started_cleaning_up(own, cleaning.task_id)
        second = await cancel(client, napping.task_id, "second")
        assert second.status == S.TASK_STATUS_CANCELLED
        first_done = await first
        assert first_done.status == S.TASK_STATUS_CANCELLED
        assert second.end_time.ToNanoseconds() < first_done.end_time.ToNanoseconds()  # not after the clean-up
        for each in (client, own):
            await each.channel.close()


async def test_map_items_adaptive_visits_and_subworkflows_clean_up_where_they_had_begun(parking_server, testkit):
    _, client = parking_server
    item = on_cancel("each", step("work", "sleep", "{'ms': 10000 * (item + 1)}"), step("undo", "echo", "{'i': item}"))
    mapped = {"id": "m", "map": {"items": "[0, 1, 2, 3, 4]", "body": item, "max_concurrency": 2}}
    await create(client, workflow("child", on_cancel("c", step("inside", "sleep", SLOW), step("undo", "echo"))))
    states = [
        {"name": "first", "node": step("warm", "echo"), "transitions": [{"to": "second"}]},
        {
            "name": "second",
            "terminal": True,
            "node": on_cancel("deep", step("hold", "sleep", SLOW), step("let-go", "echo")),
        },
    ]
    called = {"id": "sub", "subworkflow": {"workflow_id": "child", "version": "1"}}
    adaptive = {"id": "a", "adaptive": {"states": states}}
    root = {"id": "p", "parallel": {"children": [mapped, adaptive, called]}}
    await create(client, workflow("everywhere", root))
    task = await submit(client, "everywhere")
    await started(client, task.task_id, "p/m/each[0]/work", "p/m/each[1]/work", "p/a/deep/hold", "p/sub/c/inside")
    done = await cancel(client, task.task_id, "stop everything")

    assert done.status == S.TASK_STATUS_CANCELLED and done.error.message == "stop everything"
    states_of = step_states(done)
    undone = sorted(p for p, s in states_of.items() if s.status == task_pb2.STEP_STATUS_COMPLETED and "undo" in p)
    assert undone == ["p/m/each[0]/undo", "p/m/each[1]/undo", "p/sub/c/undo"]  # items 2-4 had not begun
    assert result_of(states_of["p/m/each[1]/undo"]) == {"i": 1}
    assert states_of["p/a/deep/let-go"].status == task_pb2.STEP_STATUS_COMPLETED
    calls = (await plugin_stats(testkit))["calls"]
    assert calls[f"{task.task_id}/p/a/warm/echo"] == 1  # the walk took the transition again, not the step
    taken = [e for e in await events(client, task.task_id) if e.type == E.TASK_EVENT_TYPE_TRANSITION_TAKEN]
    assert len(taken) == 1  # and did not say so again
    assert not [p for p in states_of if p.startswith("p/m/each[2]")]


async def test_a_task_taken_over_with_a_cancel_left_for_it_cleans_up_without_running_its_body_again(
    server_factory, redis_url, testkit
):
    """A replica stops with the task RUNNING; a cancel is left for it; the replica that takes the
    task over acts on the cancel before anything runs again: the step in flight (a charge, say) is
    not called a second time, only the clean-up runs."""
    first = await server_factory(store=redis_url, lease_seconds=1.0)
    api_only = await server_factory(store=redis_url, limits=Limits(max_tasks_in_flight=0))
    client, api = client_for(first), client_for(api_only)
    await create(client, workflow("charged", on_cancel("r", step("charge", "sleep", SLOW), step("refund", "echo"))))
    task = await submit(client, "charged")
    await started(client, task.task_id, "r/charge")
    await first.stop(0.05)  # shut down without ending the task: it stays RUNNING under a lease that runs out
    cancelling = asyncio.ensure_future(cancel(api, task.task_id, "left for whoever takes it"))
    await asyncio.sleep(0.3)  # the request is stored
    await server_factory(store=redis_url, lease_seconds=1.0)
    done = await cancelling
    assert done.status == S.TASK_STATUS_CANCELLED and done.error.message == "left for whoever takes it"
    assert step_states(done)["r/refund"].status == task_pb2.STEP_STATUS_COMPLETED
    calls = (await plugin_stats(testkit))["calls"]
    assert calls[f"{task.task_id}/r/charge/sleep"] == 1 and calls[f"{task.task_id}/r/refund/echo"] == 1
    for each in (client, api):
        await each.channel.close()
