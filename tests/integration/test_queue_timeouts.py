"""Queue timeouts: a task that has not started by its queue deadline ends CANCELLED
(`QUEUE_TIMEOUT:`) and never runs; one that started is never expired."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2

from mcp_sdk.proto import schedule_pb2, task_pb2
from mcp_server.engine.compiler import compile_workflow
from mcp_server.engine.queue_deadlines import SWEPT
from mcp_server.engine.queued_cancels import AT_ONCE, cancel_expired, cancel_queued
from mcp_server.engine.runner import TaskRunner
from mcp_server.errors import Unavailable
from mcp_server.settings import Limits
from mcp_server.state import open_store
from tests.conftest import client_for
from tests.contract.conftest import new_task
from tests.e2e.test_server_process import free_port
from tests.helpers import create, error_reason, events, step, violations, wait_done, workflow
from tests.integration.test_observability import scrape

pytestmark = pytest.mark.asyncio
S = task_pb2
NAP = step("nap", "sleep", "{'ms': 1500}")


@pytest.fixture
async def one_slot(server_factory, store_url):
    """A replica that runs one task at a time, busy with a 1.5 s nap: what comes next queues."""
    client = client_for(await server_factory(store=store_url, limits=Limits(max_tasks_in_flight=1)))
    await create(client, workflow("nap", NAP))
    await create(client, workflow("quick", step("say", "echo")))
    yield client
    await client.channel.close()


def request(workflow_id: str, queue_timeout: float | None = None, **fields: Any) -> task_pb2.SubmitTaskRequest:
    sent = task_pb2.SubmitTaskRequest(workflow_id=workflow_id, **fields)
    sent.input_data.update({"who": "ada"})
    if queue_timeout is not None:
        sent.queue_timeout.FromNanoseconds(int(queue_timeout * 1e9))
    return sent


async def submitted(client: Any, sent: task_pb2.SubmitTaskRequest) -> task_pb2.Task:
    return (await client.tasks.SubmitTask(sent)).task


async def busy(client: Any) -> task_pb2.Task:
    nap = await submitted(client, request("nap"))
    async with asyncio.timeout(10):
        while (
            await client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=nap.task_id))
        ).task.status != S.TASK_STATUS_RUNNING:
            await asyncio.sleep(0.01)
    return nap


async def test_a_queued_task_not_started_by_its_deadline_ends_cancelled_and_never_runs(one_slot):
    client = one_slot
    nap = await busy(client)
    began = time.monotonic()
    late = await submitted(client, request("quick", queue_timeout=0.3))
    patient = await submitted(client, request("quick", queue_timeout=30))
    assert late.queue_deadline.ToNanoseconds() - late.create_time.ToNanoseconds() == 300_000_000

    ended = await wait_done(client, late.task_id)
    assert time.monotonic() - began < 1.4  # by the sweep, while the nap still holds the slot
    assert ended.status == S.TASK_STATUS_CANCELLED and ended.error.message.startswith("QUEUE_TIMEOUT:")
    assert not ended.HasField("start_time") and ended.step_count == 0
    assert [e.type for e in await events(client, late.task_id)] == [
        S.TASK_EVENT_TYPE_QUEUED,
        S.TASK_EVENT_TYPE_CANCELLED,
    ]
    assert (await wait_done(client, patient.task_id)).status == S.TASK_STATUS_COMPLETED
    assert (await wait_done(client, nap.task_id)).status == S.TASK_STATUS_COMPLETED


async def test_the_workflow_default_applies_and_a_request_overrides_it(one_slot):
    client = one_slot
    hasty = workflow("hasty", step("say", "echo"), defaults={"queue_timeout": "0.3s"})
    await create(client, hasty)
    await busy(client)
    by_default = await submitted(client, request("hasty"))
    overridden = await submitted(client, request("hasty", queue_timeout=30))
    assert (await wait_done(client, by_default.task_id)).error.message.startswith("QUEUE_TIMEOUT:")
    assert (await wait_done(client, overridden.task_id)).status == S.TASK_STATUS_COMPLETED


async def test_a_task_that_started_is_never_expired(server_factory, store_url):
    client = client_for(await server_factory(store=store_url))
    await create(client, workflow("nap", NAP))
    started = await submitted(client, request("nap", queue_timeout=0.2))  # room: it starts at once
    done = await wait_done(client, started.task_id)
    assert done.status == S.TASK_STATUS_COMPLETED  # 1.5 s past a 0.2 s deadline
    await client.channel.close()


async def test_a_task_behind_its_concurrency_key_expires_too(server_factory, store_url):
    client = client_for(await server_factory(store=store_url))
    keyed = workflow("keyed", NAP, concurrency={"key": "input.who", "max_running": 1})
    await create(client, keyed)
    first = await submitted(client, request("keyed"))
    behind = await submitted(client, request("keyed", queue_timeout=0.3))
    assert (await wait_done(client, behind.task_id)).error.message.startswith("QUEUE_TIMEOUT:")
    assert (await wait_done(client, first.task_id)).status == S.TASK_STATUS_COMPLETED
    await client.channel.close()


async def test_a_rerun_waits_as_its_workflow_allows(one_slot):
    client = one_slot
    await create(client, workflow("hasty", step("say", "echo"), defaults={"queue_timeout": "0.3s"}))
    source = await wait_done(client, (await submitted(client, request("hasty"))).task_id)
    await busy(client)
    rerun = (await client.tasks.RerunTask(task_pb2.RerunTaskRequest(task_id=source.task_id))).task
    assert rerun.HasField("queue_deadline")
    assert (await wait_done(client, rerun.task_id)).error.message.startswith("QUEUE_TIMEOUT:")


async def test_a_queue_timeout_out_of_range_is_refused_naming_the_field(server_factory, store_url):
    client = client_for(await server_factory(store=store_url))
    await create(client, workflow("quick", step("say", "echo")))
    for seconds in (-1, 8 * 24 * 3600):
        sent = request("quick")
        sent.queue_timeout.CopyFrom(duration_pb2.Duration(seconds=seconds))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.tasks.SubmitTask(sent)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "queue_timeout" in violations(caught.value)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await create(client, workflow("bad", step("say", "echo"), defaults={"queue_timeout": "-1s"}))
    assert "workflow.defaults.queue_timeout" in violations(caught.value)
    schedule = schedule_pb2.Schedule(schedule_id="late", action=request("quick"))
    schedule.spec.every.add(seconds=60)
    schedule.action.queue_timeout.CopyFrom(duration_pb2.Duration(seconds=-5))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.schedules.CreateSchedule(schedule_pb2.CreateScheduleRequest(schedule=schedule))
    assert error_reason(caught.value) and any("queue_timeout" in f for f in violations(caught.value))
    await client.channel.close()


class NeverCalled:
    """A caller for a run that must call nothing."""

    async def call(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a task past its queue deadline called a protocol")


async def queued_past_its_deadline(store: Any) -> task_pb2.Task:
    """A task of workflow "quick" put in the store's queue directly, its queue deadline passed."""
    task, queued = new_task("quick")
    task.queue_deadline.FromNanoseconds(time.time_ns() + 50_000_000)
    await store.queue.create_task(task, queued)
    await asyncio.sleep(0.1)
    return task


async def test_a_run_that_takes_a_task_past_its_deadline_ends_it_before_it_starts(store_url):
    """The sweep's gap: a replica claims the task after its deadline, before any sweep came to it."""
    store = await open_store(store_url)
    try:
        task = await queued_past_its_deadline(store)
        claimed, token = await store.queue.claim_task("here", 30)
        plan = compile_workflow(workflow("quick", step("say", "echo")), Limits())
        await TaskRunner(NeverCalled(), store.tasks).resume_from(claimed, plan, token)  # type: ignore[arg-type]

        ended = await store.tasks.get_task(task.task_id)
        assert ended.status == S.TASK_STATUS_CANCELLED and ended.error.message.startswith("QUEUE_TIMEOUT:")
        assert not ended.HasField("start_time")
        logged = [e.type for e in await store.tasks.read_events(task.task_id, 0)]
        assert logged == [S.TASK_EVENT_TYPE_QUEUED, S.TASK_EVENT_TYPE_CANCELLED]
    finally:
        await store.close()


async def test_the_sweep_hands_an_expired_task_out_again_until_it_is_cancelled(store_url):
    """A sweep's answer can be lost (a connection dropped under it; on a cluster, another master
    failing its part of the call) or its cancel refused (the store away a moment): that task is
    not ended, so a later sweep hands it out again; once cancelled, no sweep does."""
    store = await open_store(store_url)
    try:
        task = await queued_past_its_deadline(store)
        assert (await store.waits.release_due())[1] == [task.task_id]  # and nobody cancels it
        async with asyncio.timeout(10):
            while task.task_id not in (await store.waits.release_due())[1]:
                await asyncio.sleep(0.25)
        assert await cancel_queued(store.queue, [], task.task_id, SWEPT) is not None
        await asyncio.sleep(2.5)  # past the time a handed-out task comes due again
        assert task.task_id not in (await store.waits.release_due())[1]
        assert (await store.tasks.get_task(task.task_id)).status == S.TASK_STATUS_CANCELLED
    finally:
        await store.close()


class RefusingSome:
    """The store's queue, refusing the cancels of two tasks: one as a store away a moment, one as
    a bug would."""

    def __init__(self, queue: Any, away: str, broken: str) -> None:
        self.queue, self.away, self.broken = queue, away, broken

    def __getattr__(self, name: str) -> Any:
        return getattr(self.queue, name)

    async def cancel_pending(self, task_id: str, event: task_pb2.TaskEvent) -> task_pb2.Task | None:
        if task_id == self.away:
            raise Unavailable("the store is away a moment")
        if task_id == self.broken:
            raise RuntimeError("a bug")
        return await self.queue.cancel_pending(task_id, event)


async def test_a_cancel_that_fails_keeps_no_other_expired_task_queued(store_url):
    """A sweep cancels its expired tasks some at a time: one whose cancel fails (the store away, a
    bug) is left for a later sweep, and every other one, in its batch and in the batches after
    it, ends now."""
    store = await open_store(store_url)
    try:
        tasks = []
        for _ in range(2 * AT_ONCE + 3):
            task, queued = new_task("quick")
            task.queue_deadline.FromNanoseconds(time.time_ns() + 50_000_000)
            await store.queue.create_task(task, queued)
            tasks.append(task.task_id)
        await asyncio.sleep(0.1)
        away, broken = tasks[1], tasks[2]

        missed = await cancel_expired(RefusingSome(store.queue, away, broken), [], tasks, SWEPT)

        assert missed == [away, broken]
        for task_id in tasks:
            status = (await store.tasks.get_task(task_id)).status
            assert status == (S.TASK_STATUS_PENDING if task_id in missed else S.TASK_STATUS_CANCELLED), task_id
    finally:
        await store.close()


async def test_expired_and_cancelled_queued_tasks_are_counted(server_factory, store_url):
    port = free_port()
    running = await server_factory(store=store_url, limits=Limits(max_tasks_in_flight=1), metrics_port=port)
    client = client_for(running)
    await create(client, workflow("nap", NAP))
    await create(client, workflow("quick", step("say", "echo")))
    await busy(client)
    expired = await submitted(client, request("quick", queue_timeout=0.2))
    cancelled = await submitted(client, request("quick"))
    await client.tasks.CancelTask(task_pb2.CancelTaskRequest(task_id=cancelled.task_id, reason="not needed"))
    await wait_done(client, expired.task_id)
    samples = await asyncio.to_thread(scrape, port)
    assert samples['mcp_queue_timeouts_total{workflow="quick"}'] == 1
    assert samples['mcp_tasks_finished_total{status="cancelled",workflow="quick"}'] == 2
    await client.channel.close()
