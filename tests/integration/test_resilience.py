"""Resilience over real gRPC with the chaos plugin: retries, timeouts, fallbacks, breakers,
bulkheads, admission, and a plugin process killed mid-call and restarted."""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest

from mcp_sdk.proto import protocol_pb2, protocol_pb2_grpc, registry_pb2, task_pb2
from tests.conftest import client_for, spawn_plugin
from tests.helpers import (
    create,
    error_reason,
    events,
    plugin_stats,
    run,
    step,
    step_states,
    submit,
    until_plugin_called,
    wait_done,
    workflow,
)

pytestmark = pytest.mark.asyncio
E = task_pb2.TaskEventType
FAST_RETRY = {"max_attempts": 3, "initial_backoff": "0.01s", "max_backoff": "0.05s"}


def chaos(node_id: str, expr: str, **extra: object) -> dict:
    return step(node_id, "chaos", expr, **extra)


async def test_retryable_failures_are_retried_with_an_event_per_retry(client):
    task = await run(client, workflow("retry", chaos("c", "{'action': 'fail_times', 'times': 2}", retry=FAST_RETRY)))
    assert task.status == task_pb2.TASK_STATUS_COMPLETED
    assert step_states(task)["c"].attempts == 3
    retries = [e for e in await events(client, task.task_id) if e.type == E.TASK_EVENT_TYPE_STEP_RETRYING]
    assert [e.attempt for e in retries] == [1, 2]
    assert all(
        e.data.fields["code"].string_value == "UNAVAILABLE" and e.data.fields["wait_seconds"].number_value >= 0
        for e in retries
    )
    assert "retrying in" in retries[0].message


@pytest.mark.parametrize("transport", ["Execute", "ExecuteMany"])
async def test_a_call_the_plugin_cancelled_is_retried_as_unavailable(client, transport):
    """The orchestrator never ends its own calls with a CANCELLED status, so one that comes back
    was the plugin's or gRPC's doing (a server shutting down, a burst shed) and is retried."""
    if transport == "Execute":  # the chaos plugin serves no ExecuteMany
        node = chaos("c", "{'action': 'fail_times', 'times': 1, 'code': 'CANCELLED'}", retry=FAST_RETRY)
    else:  # testkit serves it; its `fail` fails every attempt
        node = step("c", "fail", "{'code': 'CANCELLED', 'message': 'shed'}", retry=FAST_RETRY)
    task = await run(client, workflow(f"cancelled-{transport}", node))
    retries = [e for e in await events(client, task.task_id) if e.type == E.TASK_EVENT_TYPE_STEP_RETRYING]
    assert retries and all(e.data.fields["code"].string_value == "UNAVAILABLE" for e in retries)
    assert "cancelled the call" in retries[0].message
    if transport == "Execute":
        assert task.status == task_pb2.TASK_STATUS_COMPLETED and step_states(task)["c"].attempts == 2
    else:
        assert task.status == task_pb2.TASK_STATUS_FAILED and step_states(task)["c"].attempts == 3
        assert task.error.code == grpc.StatusCode.UNAVAILABLE.value[0] and "shed" in task.error.message


async def test_a_non_retryable_code_is_not_retried(client):
    task = await run(
        client,
        workflow("no-retry", chaos("c", "{'action': 'fail', 'code': 'INVALID_ARGUMENT'}", retry={"max_attempts": 5})),
    )
    assert task.status == task_pb2.TASK_STATUS_FAILED
    assert step_states(task)["c"].attempts == 1 and "INVALID_ARGUMENT" in task.error.message


async def test_exhausted_retries_fail_with_the_last_code(client):
    task = await run(client, workflow("exhaust", chaos("c", "{'action': 'fail'}", retry=FAST_RETRY)))
    assert task.status == task_pb2.TASK_STATUS_FAILED
    assert task.error.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert step_states(task)["c"].attempts == 3


async def test_attempt_deadline_cancels_the_call_and_says_which_limit(client, chaos_plugin):
    wf = workflow(
        "attempt-deadline",
        chaos("c", "{'action': 'hang'}", attempt_timeout="0.2s", retry={"max_attempts": 2, "initial_backoff": "0.01s"}),
    )
    task = await run(client, wf)
    assert task.status == task_pb2.TASK_STATUS_FAILED
    assert task.error.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    assert "attempt deadline of 0.2s" in task.error.message
    assert step_states(task)["c"].attempts == 2


async def test_step_timeout_bounds_all_attempts(client):
    task = await run(client, workflow("step-timeout", chaos("c", "{'action': 'hang'}", timeout="0.3s")))
    assert task.status == task_pb2.TASK_STATUS_FAILED
    assert "step timeout of 0.3s" in task.error.message
    assert task.error.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]


async def test_task_timeout_bounds_the_whole_run(client):
    wf = workflow(
        "task-timeout",
        {
            "id": "r",
            "sequence": {"children": [chaos("a", "{'action': 'slow', 'ms': 200}"), chaos("b", "{'action': 'hang'}")]},
        },
        defaults={"task_timeout": "0.6s"},
    )
    task = await run(client, wf)
    assert task.status == task_pb2.TASK_STATUS_FAILED
    assert "task timeout of 0.6s" in task.error.message
    assert step_states(task)["r/a"].status == task_pb2.STEP_STATUS_COMPLETED


async def test_fallback_runs_when_the_primary_fails_and_is_recorded(client):
    wf = workflow(
        "fallback",
        chaos(
            "c",
            "{'action': 'fail'}",
            retry={"max_attempts": 1},
            fallbacks=[{"protocol": "echo", "input": "{'from': 'fallback'}"}],
        ),
    )
    task = await run(client, wf)
    assert task.status == task_pb2.TASK_STATUS_COMPLETED
    assert step_states(task)["c"].fallback_protocol == "echo"
    used = [e for e in await events(client, task.task_id) if e.type == E.TASK_EVENT_TYPE_FALLBACK_USED]
    assert len(used) == 1 and used[0].protocol == "echo" and "chaos failed" in used[0].message


async def test_malformed_plugin_output_fails_the_step_with_a_message_saying_so(client):
    task = await run(client, workflow("malformed", chaos("c", "{'action': 'malformed'}", retry={"max_attempts": 1})))
    assert task.status == task_pb2.TASK_STATUS_FAILED
    assert "not a valid ExecuteResponse" in task.error.message


async def test_breaker_opens_fails_fast_falls_back_and_closes_again(server_factory, chaos_plugin):
    running = await server_factory(breaker_failure_threshold=2, breaker_reset_seconds=0.5)
    client = client_for(running)
    failing = workflow(
        "breaker",
        chaos(
            "c",
            "{'action': 'fail', 'marker_key': input.k}",
            retry={"max_attempts": 1},
            fallbacks=[{"protocol": "echo", "input": "{'fallback': true}"}],
        ),
    )
    await create(client, failing)
    first = [await wait_done(client, (await submit(client, "breaker", {"k": i})).task_id) for i in range(3)]
    assert all(t.status == task_pb2.TASK_STATUS_COMPLETED for t in first)  # the fallback answered each time
    third_log = await events(client, first[2].task_id)
    fallbacks = [e for e in third_log if e.type == E.TASK_EVENT_TYPE_FALLBACK_USED]
    assert "circuit breaker of chaos is open" in fallbacks[0].data.fields["error"].string_value
    async with grpc.aio.insecure_channel(chaos_plugin.address) as channel:
        seen = (
            await protocol_pb2_grpc.ProtocolServiceStub(channel).Execute(
                protocol_pb2.ExecuteRequest(protocol="chaos_stats")
            )
        ).output
    called = set(seen.fields["calls"].struct_value.fields)
    assert (
        f"{first[1].task_id}/c/chaos" in called and f"{first[2].task_id}/c/chaos" not in called
    )  # the open breaker never called
    second_log = await events(client, first[1].task_id)
    changes = [e for e in second_log if e.type == E.TASK_EVENT_TYPE_BREAKER_STATE_CHANGED]
    assert changes and changes[0].data.fields["to"].string_value == "open"
    listed = {
        p.manifest.name: p for p in (await client.registry.ListProtocols(registry_pb2.ListProtocolsRequest())).protocols
    }
    assert listed["chaos"].breaker == registry_pb2.BREAKER_STATE_OPEN
    await asyncio.sleep(0.6)
    ok = await run(client, workflow("breaker-ok", chaos("c", "{'action': 'ok'}")))
    assert ok.status == task_pb2.TASK_STATUS_COMPLETED and not step_states(ok)["c"].fallback_protocol
    listed = {
        p.manifest.name: p for p in (await client.registry.ListProtocols(registry_pb2.ListProtocolsRequest())).protocols
    }
    assert listed["chaos"].breaker == registry_pb2.BREAKER_STATE_CLOSED
    await client.channel.close()


async def test_a_plugin_killed_mid_call_and_restarted_is_retried_to_success(server_factory, tmp_path):
    victim = spawn_plugin("protocol_plugins.chaos")
    port = victim.address.rsplit(":", 1)[1]
    running = await server_factory(session_plugins=False, extra_plugins=(victim.address,))
    client = client_for(running)
    listed = {
        (p.manifest.name, p.address)
        for p in (await client.registry.ListProtocols(registry_pb2.ListProtocolsRequest())).protocols
    }
    assert ("chaos", victim.address) in listed and len(listed) == 2  # its only instance (chaos and chaos_stats)
    marker = tmp_path / "died-once"
    wf = workflow(
        "phoenix",
        chaos(
            "c",
            f"{{'action': 'die', 'marker': '{marker}'}}",
            retry={"max_attempts": 30, "initial_backoff": "0.1s", "max_backoff": "0.2s"},
        ),
    )
    await create(client, wf)
    task = await submit(client, "phoenix")
    assert await asyncio.to_thread(victim.process.wait, 10) == 1  # it died mid-call
    reborn = spawn_plugin("protocol_plugins.chaos", listen=f"127.0.0.1:{port}")
    try:
        done = await wait_done(client, task.task_id, timeout=20)
        assert done.status == task_pb2.TASK_STATUS_COMPLETED, done.error
        assert step_states(done)["c"].attempts >= 2
        assert done.result.struct_value.fields["served_by"].number_value == reborn.process.pid
    finally:
        reborn.process.terminate()
        reborn.process.wait(timeout=10)
        await client.channel.close()


async def test_bulkhead_caps_calls_in_flight_per_protocol(server_factory, testkit):
    running = await server_factory(protocol_concurrency=("sleep=3",))
    client = client_for(running)
    wf = workflow(
        "bulkhead",
        {
            "id": "m",
            "map": {
                "items": "[1,2,3,4,5,6,7,8,9,10,11,12]",
                "max_concurrency": 12,
                "body": step("nap", "sleep", "{'ms': 40}"),
            },
        },
    )
    task = await run(client, wf)
    assert task.status == task_pb2.TASK_STATUS_COMPLETED
    assert (await plugin_stats(testkit))["max_in_flight"] == 3
    await client.channel.close()


async def test_tasks_in_flight_per_replica_are_limited_and_the_rest_wait(server_factory, testkit):
    from mcp_server.settings import Limits

    running = await server_factory(limits=Limits(max_tasks_in_flight=2))
    client = client_for(running)
    await create(client, workflow("admit", step("nap", "sleep", "{'ms': 100}")))
    tasks = [await submit(client, "admit") for _ in range(6)]
    done = [await wait_done(client, t.task_id) for t in tasks]
    assert all(t.status == task_pb2.TASK_STATUS_COMPLETED for t in done)
    assert (await plugin_stats(testkit))["max_in_flight"] == 2
    await client.channel.close()


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_a_full_queue_answers_resource_exhausted_until_a_place_frees(server_factory, redis_url, backend):
    from mcp_server.settings import Limits

    store = "sqlite://:memory:" if backend == "sqlite" else redis_url
    running = await server_factory(store=store, limits=Limits(max_queue_length=2))
    await running.orchestrator.dispatcher.stop(0)
    client = client_for(running)
    await create(client, workflow("full", step("s", "echo")))
    first = await submit(client, "full")
    await submit(client, "full")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await submit(client, "full")
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and error_reason(err.value) == "QUEUE_FULL"
    await client.tasks.CancelTask(task_pb2.CancelTaskRequest(task_id=first.task_id))
    await asyncio.sleep(0.2)  # the queue's count is at most 0.1 s old
    assert (await submit(client, "full")).status == task_pb2.TASK_STATUS_PENDING
    await client.channel.close()


async def test_cancel_reaches_the_plugin_call(client, chaos_plugin):
    async with grpc.aio.insecure_channel(chaos_plugin.address) as channel:
        stub = protocol_pb2_grpc.ProtocolServiceStub(channel)
        before = (
            (await stub.Execute(protocol_pb2.ExecuteRequest(protocol="chaos_stats")))
            .output.fields["cancelled"]
            .number_value
        )
        await create(client, workflow("hang-cancel", chaos("c", "{'action': 'hang'}")))
        task = await submit(client, "hang-cancel")
        await until_plugin_called(stub, task.task_id, "chaos_stats")
        await client.tasks.CancelTask(task_pb2.CancelTaskRequest(task_id=task.task_id))
        for _ in range(40):
            after = (
                (await stub.Execute(protocol_pb2.ExecuteRequest(protocol="chaos_stats")))
                .output.fields["cancelled"]
                .number_value
            )
            if after > before:
                break
            await asyncio.sleep(0.05)
        assert after == before + 1


async def test_breaker_state_is_shared_by_replicas_on_one_redis(server_factory, redis_url):
    first = await server_factory(store=redis_url, breaker_failure_threshold=1, breaker_reset_seconds=30)
    second = await server_factory(store=redis_url, breaker_failure_threshold=1, breaker_reset_seconds=30)
    a, b = client_for(first), client_for(second)
    task = await run(a, workflow("trip", chaos("c", "{'action': 'fail'}", retry={"max_attempts": 1})))
    assert task.status == task_pb2.TASK_STATUS_FAILED

    async def breaker_on_b() -> int:
        listed = (await b.registry.ListProtocols(registry_pb2.ListProtocolsRequest())).protocols
        return next(p.breaker for p in listed if p.manifest.name == "chaos")

    async with asyncio.timeout(5):
        while await breaker_on_b() != registry_pb2.BREAKER_STATE_OPEN:
            await asyncio.sleep(0.1)
    await a.channel.close()
    await b.channel.close()


async def test_a_cancel_under_way_does_not_swallow_the_cancellation_of_whoever_waits_on_it(server_factory, testkit):
    """The replica's cancel loop waits for a cancelled run to end; stopping the replica cancels
    that loop meanwhile, and the loop must stop (it used to swallow that and run for ever, so a
    replica's shutdown hung until its 20 s stage limit)."""
    running = await server_factory()
    client = client_for(running)
    await create(client, workflow("to-cancel", step("nap", "sleep", "{'ms': 10000}")))
    task = await submit(client, "to-cancel")
    await until_plugin_called(testkit, task.task_id)
    waiter = asyncio.create_task(running.orchestrator.dispatcher.cancel(task.task_id, "from a test"))
    await asyncio.sleep(0)  # the waiter has cancelled the run and waits for it to end
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    done = await wait_done(client, task.task_id)
    assert done.status == task_pb2.TASK_STATUS_CANCELLED and "from a test" in done.error.message
    await client.channel.close()


async def test_the_claim_loop_stops_when_a_finishing_task_wakes_it_in_the_same_turn(server_factory):
    """A replica stopping as a task ends: the ending task wakes the claim loop in the same loop
    turn as the shutdown cancels it. Python 3.11's wait_for returned instead of raising there,
    the loop claimed on, and the shutdown hung until its 20 s stage limit."""
    running = await server_factory()
    dispatcher = running.orchestrator.dispatcher
    claim = next(loop for loop in dispatcher._loops if loop.get_name() == "claim")
    await asyncio.sleep(0.05)  # the queue is empty: it waits for a wake-up or a quarter second
    dispatcher._wake.set()
    claim.cancel()
    finished, _ = await asyncio.wait([claim], timeout=2)
    assert claim in finished and claim.cancelled()


async def test_the_claim_loop_stops_even_when_a_store_call_swallows_its_cancellation(server_factory, monkeypatch):
    """redis-py on Python 3.11 loses a cancellation that arrives with a reply; the loop notices
    that the task was asked to stop, and stops, instead of claiming on for ever."""
    running = await server_factory()
    dispatcher = running.orchestrator.dispatcher

    async def swallowing_claim(*args: object, **kwargs: object) -> None:
        try:
            await asyncio.sleep(10)  # a reply on its way...
        except asyncio.CancelledError:
            return None  # ...and the cancellation lost with it

    monkeypatch.setattr(dispatcher.queue, "claim_task", swallowing_claim)
    claim = next(loop for loop in dispatcher._loops if loop.get_name() == "claim")
    await asyncio.sleep(0.4)  # past its quarter-second wait: inside the claim
    claim.cancel()
    finished, _ = await asyncio.wait([claim], timeout=3)
    assert claim in finished and claim.cancelled()


@pytest.mark.parametrize("run", range(4))
async def test_a_server_stopped_as_soon_as_it_started_stops_every_loop(server_factory, store_url, caplog, run):
    """A cancellation redis-py swallowed while a loop's first store call connected (the signal
    nudges' subscribe, the metrics sampler's reads) left that loop running: each stop waited 5 s
    for it, or 11 s and then went on without the store closed."""
    caplog.set_level(logging.ERROR)
    running = await server_factory(store=store_url)
    await running.stop()
    stuck = [r.getMessage() for r in caplog.records if "did not stop" in r.getMessage()]
    assert stuck == []


async def test_a_stream_that_stalls_past_its_idle_timeout_is_cut_and_retried(client, testkit):
    """The first attempt streams three messages and then nothing: with an idle timeout of 0.4 s it
    is cancelled (the plugin sees it) and retried long before its 30 s stall or any deadline."""
    node = step("talk", "stall", "{'before': 3, 'every_ms': 100}", stream=True, idle_timeout="0.4s", retry=FAST_RETRY)
    task = await run(client, workflow("stalled", node), timeout=15)
    assert task.status == task_pb2.TASK_STATUS_COMPLETED, task.error
    assert step_states(task)["talk"].attempts == 2
    log = await events(client, task.task_id)
    retry = next(e for e in log if e.type == E.TASK_EVENT_TYPE_STEP_RETRYING)
    assert retry.data.fields["code"].string_value == "DEADLINE_EXCEEDED"
    assert "sent nothing for 0.4s (the step's idle_timeout)" in retry.message
    progress = [e.attempt for e in log if e.type == E.TASK_EVENT_TYPE_PROGRESS]
    assert progress == [1, 1, 1, 2, 2, 2]  # messages 100 ms apart are within the timeout
    assert (await plugin_stats(testkit))["cancelled"] == 1  # the stalled call was ended at the plugin


async def test_an_idle_timeout_needs_a_streamed_step(client):
    node = step("talk", "echo", idle_timeout="1s")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await create(client, workflow("unary-idle", node))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "needs stream: true" in refused.value.details()
