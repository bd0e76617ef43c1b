"""A retry's backoff is a timer of the run, on both stores: a long one parks the task (WAITING,
holding no slot) until the retry is due, and it counts against the step's timeout. (Across a
kill -9: tests/e2e/test_recovery.py.)"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from mcp_sdk.proto import task_pb2
from mcp_server.settings import Limits
from tests.conftest import client_for
from tests.helpers import create, events, step, submit, wait_done, workflow

pytestmark = pytest.mark.asyncio
E = task_pb2.TaskEventType
S = task_pb2.TaskStatus


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
    other = await wait_done(client, (await submit(client, "quick")).task_id, timeout=5)
    assert other.status == S.TASK_STATUS_COMPLETED
    assert await status_of(client, task.task_id) == S.TASK_STATUS_WAITING  # still in its backoff
    done = await wait_done(client, task.task_id, timeout=15)
    assert done.status == S.TASK_STATUS_COMPLETED, done
    log = await events(client, task.task_id)
    retried = next(e for e in log if e.type == E.TASK_EVENT_TYPE_STEP_RETRYING)
    completed = next(e for e in log if e.type == E.TASK_EVENT_TYPE_STEP_COMPLETED)
    assert completed.time.ToNanoseconds() - retried.time.ToNanoseconds() >= 2.8e9  # 3 s less the jitter
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
    assert 3e9 <= took < 10e9, took / 1e9
    assert any(e.type == E.TASK_EVENT_TYPE_RESUMED for e in await events(client, task.task_id))
    assert not done.steps[0].HasField("retry_time")
    await client.channel.close()
