"""A retry's backoff is a timer of the run, on both stores: a long one parks the task (WAITING,
holding no slot) until the retry is due, and it counts against the step's timeout. (Across a
kill -9: tests/e2e/test_recovery.py.)"""

from __future__ import annotations

import asyncio
import datetime
import uuid
from typing import Any

import pytest
from google.protobuf import json_format

from mcp_sdk.proto import task_pb2
from mcp_server.settings import Limits
from tests.conftest import client_for, spawn_plugin
from tests.helpers import create, events, plugin_stats, result, step, submit, wait_done, workflow

pytestmark = pytest.mark.asyncio
E = task_pb2.TaskEventType
S = task_pb2.TaskStatus
QUOTA_PLUGIN = "tests.support.quota_plugin"


def shaky(workflow_id: str, backoff: str, **extra: Any) -> Any:
    """One step that fails its first call (UNAVAILABLE) and succeeds on its retry after `backoff`."""
    retry = {"max_attempts": 2, "initial_backoff": backoff, "max_backoff": backoff, "jitter": 0.05}
    return workflow(workflow_id, step("s", "flaky", "{'failures': 1}", retry=retry, **extra))


async def status_of(client: Any, task_id: str) -> int:
    return int((await client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=task_id))).task.status)


async def test_a_long_backoff_parks_the_task_and_frees_its_slot(server_factory, store_url):
    """One run slot: a task whose retry is 3 s away parks (the backoff is longer than the 2 s a
    wait may hold its slot), another task runs meanwhile, and the retry goes when it is due."""
    running = await server_factory(store=store_url, limits=Limits(max_tasks_in_flight=1))
    client = client_for(running)
    await create(client, shaky("slow-retry", "3s"))
    await create(client, workflow("quick", step("e", "echo")))
    task = await submit(client, "slow-retry")
    async with asyncio.timeout(10):
        while await status_of(client, task.task_id) != S.TASK_STATUS_WAITING:
            await asyncio.sleep(0.05)
    due = (await client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=task.task_id))).task.steps[0].retry_time
    other = await wait_done(client, (await submit(client, "quick")).task_id, timeout=5)
    assert other.status == S.TASK_STATUS_COMPLETED
    assert await status_of(client, task.task_id) == S.TASK_STATUS_WAITING  # still in its backoff
    done = await wait_done(client, task.task_id, timeout=15)
    assert done.status == S.TASK_STATUS_COMPLETED, done
    log = await events(client, task.task_id)
    retried = next(e for e in log if e.type == E.TASK_EVENT_TYPE_STEP_RETRYING)
    completed = next(e for e in log if e.type == E.TASK_EVENT_TYPE_STEP_COMPLETED)
    assert completed.time.ToNanoseconds() - retried.time.ToNanoseconds() >= 2.8e9  # 3 s less the jitter
    assert completed.time.ToNanoseconds() >= due.ToNanoseconds()
    # the event says when the retry is due, as the step's record held it (RFC 3339, to the millisecond)
    said = datetime.datetime.fromisoformat(retried.data["retry_time"].replace("Z", "+00:00"))
    assert abs(said.timestamp() - due.ToNanoseconds() / 1e9) < 0.001
    assert any(e.type == E.TASK_EVENT_TYPE_RESUMED for e in log)  # it did park
    state = done.steps[0]
    assert (state.attempts, state.failed_attempts, state.HasField("retry_time")) == (2, 1, False)
    await client.channel.close()


async def test_a_short_backoff_waits_in_memory(server_factory, store_url):
    running = await server_factory(store=store_url)
    client = client_for(running)
    await create(client, shaky("quick-retry", "0.3s"))
    done = await wait_done(client, (await submit(client, "quick-retry")).task_id, timeout=10)
    assert done.status == S.TASK_STATUS_COMPLETED and done.steps[0].attempts == 2
    assert not any(e.type == E.TASK_EVENT_TYPE_RESUMED for e in await events(client, done.task_id))
    assert not done.steps[0].HasField("retry_time")
    await client.channel.close()


async def test_a_backoff_past_the_step_timeout_fails_the_step_when_its_timeout_runs_out(server_factory, store_url):
    """A retry an hour away in a 3 s step timeout: the task parks, and the step fails at 3 s."""
    running = await server_factory(store=store_url)
    client = client_for(running)
    await create(client, shaky("hour-retry", "3600s", timeout="3s"))
    task = await submit(client, "hour-retry")
    done = await wait_done(client, task.task_id, timeout=20)
    assert done.status == S.TASK_STATUS_FAILED and "the step timeout of 3s ran out" in done.error.message
    took = done.end_time.ToNanoseconds() - done.steps[0].start_time.ToNanoseconds()
    assert 3e9 - 5e6 <= took < 10e9, took / 1e9  # the loop's timers count in milliseconds: 5 ms of slack
    assert any(e.type == E.TASK_EVENT_TYPE_RESUMED for e in await events(client, task.task_id))
    assert not done.steps[0].HasField("retry_time")
    await client.channel.close()


async def test_a_provider_s_retry_after_is_the_backoff_and_a_long_one_parks_the_task(
    server_factory, store_url, testkit
):
    """A plugin answers RESOURCE_EXHAUSTED with a RetryInfo of 4 s (a provider's 429 with
    Retry-After) and no other instance takes calls: the retry waits those 4 s as its backoff
    (the policy's is 10 ms), the task parked meanwhile rather than holding a slot."""
    running = await server_factory(store=store_url)
    client = client_for(running)
    tag = uuid.uuid4().hex
    retry = {"max_attempts": 3, "initial_backoff": "0.01s"}
    await create(
        client, workflow("provider", step("s", "throttled", f"{{'tag': '{tag}', 'retry_after': 4}}", retry=retry))
    )
    task = await submit(client, "provider")
    async with asyncio.timeout(10):
        while await status_of(client, task.task_id) != S.TASK_STATUS_WAITING:
            await asyncio.sleep(0.05)
    done = await wait_done(client, task.task_id, timeout=15)
    assert done.status == S.TASK_STATUS_COMPLETED, done
    first, second = sorted((await plugin_stats(testkit))["ticks"][tag])
    assert second - first >= 4.0 - 0.05  # the pause asked for, not the policy's 10 ms
    log = await events(client, task.task_id)
    retried = next(e for e in log if e.type == E.TASK_EVENT_TYPE_STEP_RETRYING)
    assert 3.9 <= retried.data["wait_seconds"] <= 4.0, retried.message
    assert any(e.type == E.TASK_EVENT_TYPE_RESUMED for e in log)
    await client.channel.close()


async def test_a_pause_one_instance_asks_for_does_not_hold_a_retry_another_instance_can_take(server_factory):
    """Two instances of `quota`; the one asks every call for a 30 s pause: the retry goes to the
    other at once (its policy's 10 ms), not after the 30 s."""
    refusing, serving = spawn_plugin(QUOTA_PLUGIN), spawn_plugin(QUOTA_PLUGIN)
    try:
        running = await server_factory(session_plugins=False, extra_plugins=(refusing.address, serving.address))
        client = client_for(running)
        retry = {"max_attempts": 3, "initial_backoff": "0.01s"}
        data = f"{{'refuse_pid': {refusing.process.pid}, 'retry_after': 30}}"
        await create(client, workflow("quota", step("q", "quota", data, retry=retry)))
        tasks = [await submit(client, "quota") for _ in range(4)]  # spread over both: one meets the refusal
        done = [await wait_done(client, task.task_id, timeout=10) for task in tasks]
        assert all(task.status == S.TASK_STATUS_COMPLETED for task in done), done
        assert all(int(result(task)["pid"]) == serving.process.pid for task in done)
        waited = [
            e.data["wait_seconds"]
            for task in done
            for e in await events(client, task.task_id)
            if e.type == E.TASK_EVENT_TYPE_STEP_RETRYING
        ]
        assert waited and max(waited) < 1, waited
        await client.channel.close()
    finally:
        for plugin in (refusing, serving):
            plugin.process.terminate()
            plugin.process.wait(timeout=10)


async def test_a_task_cancelled_in_a_parked_backoff_ends_cancelled_with_no_retry_due(server_factory, store_url):
    running = await server_factory(store=store_url)
    client = client_for(running)
    await create(client, shaky("cancel-in-backoff", "60s"))
    task = await submit(client, "cancel-in-backoff")
    async with asyncio.timeout(10):
        while await status_of(client, task.task_id) != S.TASK_STATUS_WAITING:
            await asyncio.sleep(0.05)
    await client.tasks.CancelTask(task_pb2.CancelTaskRequest(task_id=task.task_id))
    done = await wait_done(client, task.task_id, timeout=10)
    assert done.status == S.TASK_STATUS_CANCELLED, done
    state = done.steps[0]
    assert state.status == task_pb2.STEP_STATUS_CANCELLED and not state.HasField("retry_time")
    assert (state.attempts, state.failed_attempts) == (1, 1)
    await client.channel.close()


async def test_a_plugin_asking_for_a_pause_of_millennia_gets_the_step_timeout(server_factory, store_url, testkit):
    """A RetryInfo of 3 x 10^11 s (a Duration's most; past the year 9999): the task parks with a retry time a client can
    read (capped), and the step fails when its 3 s timeout runs out."""
    running = await server_factory(store=store_url)
    client = client_for(running)
    data = f"{{'tag': '{uuid.uuid4().hex}', 'retry_after': 300000000000.0}}"
    await create(client, workflow("millennia", step("s", "throttled", data, timeout="3s", retry={"max_attempts": 3})))
    task = await submit(client, "millennia")
    async with asyncio.timeout(10):
        while await status_of(client, task.task_id) != S.TASK_STATUS_WAITING:
            await asyncio.sleep(0.05)
    parked = (await client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=task.task_id))).task
    assert json_format.MessageToDict(parked)["steps"][0]["retryTime"]  # a valid Timestamp
    done = await wait_done(client, task.task_id, timeout=15)
    assert done.status == S.TASK_STATUS_FAILED and "the step timeout of 3s ran out" in done.error.message
    await client.channel.close()


async def test_a_step_resumed_inside_its_backoff_says_when_its_retry_is_due(server_factory, store_url):
    """A parallel: one branch in a 4 s backoff, the other waiting for a signal; the task parks.
    The signal resumes it with the backoff still running: the branch begins again in this life
    (STEP_STARTED) and that event says which retry is due and when, as the first STEP_RETRYING
    did, so a watcher that draws the step from its events does not lose the retry's time."""
    running = await server_factory(store=store_url)
    client = client_for(running)
    retry = {"max_attempts": 2, "initial_backoff": "4s", "max_backoff": "4s", "jitter": 0.05}
    branches = [step("s", "flaky", "{'failures': 1}", retry=retry), {"id": "w", "wait": {"signal": "go"}}]
    await create(client, workflow("resumed-in-backoff", {"id": "p", "parallel": {"children": branches}}))
    task = await submit(client, "resumed-in-backoff")
    async with asyncio.timeout(10):
        while await status_of(client, task.task_id) != S.TASK_STATUS_WAITING:
            await asyncio.sleep(0.05)
    await client.tasks.SignalTask(task_pb2.SignalTaskRequest(task_id=task.task_id, signal="go"))
    done = await wait_done(client, task.task_id, timeout=15)
    assert done.status == S.TASK_STATUS_COMPLETED, done
    log = [e for e in await events(client, task.task_id) if e.step_path == "p/s"]
    retried = next(e for e in log if e.type == E.TASK_EVENT_TYPE_STEP_RETRYING)
    started = [e for e in log if e.type == E.TASK_EVENT_TYPE_STEP_STARTED]
    assert len(started) >= 2, [E.Name(e.type) for e in log]
    first, again = started[0], started[1]
    assert "retry_time" not in json_format.MessageToDict(first).get("data", {})  # its first life: no retry yet
    assert again.sequence > retried.sequence and again.attempt == retried.attempt == 1
    assert again.data["retry_time"] == retried.data["retry_time"]
    completed = next(e for e in log if e.type == E.TASK_EVENT_TYPE_STEP_COMPLETED)
    assert completed.time.ToNanoseconds() - retried.time.ToNanoseconds() >= 3.8e9  # it waited out the rest
    await client.channel.close()
