"""Events with real orchestrator processes: a server killed with kill -9 in the middle of a publish
to 200 workflows (or to 200 waits), restarted on the same store, and the event published again
with its id: every workflow has exactly one task of it, every wait took it once (both stores),
and the CLI publishes and shows what started."""

from __future__ import annotations

import asyncio
import collections
import signal

import grpc
import pytest

from mcp_sdk.proto import events_pb2, task_pb2
from tests.conftest import client_for_address
from tests.e2e.test_server_process import free_port, mcp
from tests.helpers import create, step, wait_done, workflow
from tests.support.processes import start_orchestrator

pytestmark = pytest.mark.asyncio
WORKFLOWS = 200
ENV = {"MCP_LIMIT_MAX_WORKFLOWS_PER_EVENT": str(WORKFLOWS)}


def where(plugins, tmp_path, request, backend: str, **env: str) -> tuple[str, str, list[str], dict[str, str]]:
    """Where a test's server processes run, one after another: an address, the store (a file, or the
    test Redis), the plugins, and their environment (ENV with `env`)."""
    store = f"sqlite:///{tmp_path}/events.db" if backend == "sqlite" else request.getfixturevalue("redis_url")
    return f"127.0.0.1:{free_port()}", store, [plugins["testkit"].address], {**ENV, **env}


async def tasks_of(client, event_id: str) -> collections.Counter[str]:
    reply = await client.tasks.ListTasks(task_pb2.ListTasksRequest(labels={"mcp/event-id": event_id}, page_size=1000))
    return collections.Counter(task.workflow_id for task in reply.tasks)


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_a_publish_cut_by_kill_9_and_sent_again_starts_each_workflow_once(plugins, tmp_path, request, backend):
    address, store, testkit, env = where(plugins, tmp_path, request, backend)
    process = start_orchestrator(address, store, testkit, "first", **env)
    client = client_for_address(address)
    try:
        for i in range(WORKFLOWS):
            await create(client, workflow(f"on-{i:03d}", step("e", "echo"), triggers=[{"event": "big.one"}]))
        request_ = events_pb2.PublishEventRequest(name="big.one", request_id="cut-1")
        publish = asyncio.ensure_future(client.events.PublishEvent(request_))
        async with asyncio.timeout(30):
            while sum((await tasks_of(client, "cut-1")).values()) < 10 and not publish.done():
                await asyncio.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        process.wait()
        first = await asyncio.gather(publish, return_exceptions=True)
        cut = isinstance(first[0], grpc.aio.AioRpcError)
        await client.channel.close()

        process = start_orchestrator(address, store, testkit, "again", **env)
        client = client_for_address(address)
        before = sum((await tasks_of(client, "cut-1")).values())
        again = await client.events.PublishEvent(request_)
        counted = await tasks_of(client, "cut-1")
        assert len(again.tasks) == WORKFLOWS and sum(t.created for t in again.tasks) == WORKFLOWS - before
        assert len(counted) == WORKFLOWS and set(counted.values()) == {1}, (cut, before)
        published = mcp(address, "event", "publish", "big.one", "--request-id", "cut-1")
        assert published.returncode == 0 and f"{WORKFLOWS} task(s) started" in published.stdout
        assert "(started before)" in published.stdout and "refused" not in published.stdout
    finally:
        await client.channel.close()
        process.terminate()
        process.wait(timeout=15)


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_a_publish_node_cut_by_kill_9_publishes_once_when_its_task_resumes(plugins, tmp_path, request, backend):
    address, store, testkit, env = where(plugins, tmp_path, request, backend, MCP_LEASE_SECONDS="1.5")
    process = start_orchestrator(address, store, testkit, "first", **env)
    client = client_for_address(address)
    try:
        for i in range(WORKFLOWS):
            await create(client, workflow(f"on-{i:03d}", step("e", "echo"), triggers=[{"event": "from.task"}]))
        await create(client, workflow("announcer", {"id": "tell", "publish": {"event": "from.task"}}))
        task = (await client.tasks.SubmitTask(task_pb2.SubmitTaskRequest(workflow_id="announcer"))).task
        listed = task_pb2.ListTasksRequest(labels={"mcp/event": "from.task"}, page_size=1000)
        async with asyncio.timeout(30):
            while len((await client.tasks.ListTasks(listed)).tasks) < 10:
                await asyncio.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        process.wait()
        await client.channel.close()

        process = start_orchestrator(address, store, testkit, "again", **env)
        client = client_for_address(address)
        done = await wait_done(client, task.task_id)
        assert done.status == task_pb2.TASK_STATUS_COMPLETED, done.error
        counted = collections.Counter(t.workflow_id for t in (await client.tasks.ListTasks(listed)).tasks)
        assert len(counted) == WORKFLOWS and set(counted.values()) == {1}
        assert len(done.result.struct_value.fields["tasks"].list_value.values) == WORKFLOWS
    finally:
        await client.channel.close()
        process.terminate()
        process.wait(timeout=15)


async def signals_received(client, task_id: str) -> int:
    events = client.tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=task_id))
    return len([e async for e in events if e.type == task_pb2.TASK_EVENT_TYPE_SIGNAL_RECEIVED])


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_a_publish_to_200_waits_cut_by_kill_9_and_sent_again_reaches_each_once(
    plugins, tmp_path, request, backend
):
    """200 tasks wait (parked, after 2 s) for one event; the publish that reaches them is cut by
    kill -9; a fresh server on the same store and the event sent again with its id: each task
    took the event once (those it reached before the kill resume when their lease runs out),
    and every one completes with it."""
    address, store, testkit, env = where(plugins, tmp_path, request, backend, MCP_LEASE_SECONDS="1.5")
    process = start_orchestrator(address, store, testkit, "first", **env)
    client = client_for_address(address)
    try:
        await create(client, workflow("held", {"id": "clear", "wait": {"event": "all.clear"}}))
        tasks = [
            (await client.tasks.SubmitTask(task_pb2.SubmitTaskRequest(workflow_id="held"))).task.task_id
            for _ in range(WORKFLOWS)
        ]
        waiting = task_pb2.ListTasksRequest(workflow_id="held", statuses=[task_pb2.TASK_STATUS_WAITING], page_size=1000)
        async with asyncio.timeout(60):
            while len((await client.tasks.ListTasks(waiting)).tasks) < WORKFLOWS:
                await asyncio.sleep(0.1)
        request_ = events_pb2.PublishEventRequest(name="all.clear", request_id="cut-w")
        request_.data.update({"go": True})
        publish = asyncio.ensure_future(client.events.PublishEvent(request_))
        async with asyncio.timeout(30):
            while len((await client.tasks.ListTasks(waiting)).tasks) > WORKFLOWS - 10 and not publish.done():
                await asyncio.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        process.wait()
        await asyncio.gather(publish, return_exceptions=True)
        await client.channel.close()

        process = start_orchestrator(address, store, testkit, "again", **env)
        client = client_for_address(address)
        again = await client.events.PublishEvent(request_)
        # the first publish reached some (cut), this one the rest: those still listed as waiting
        assert 0 < len(again.woken) < WORKFLOWS - 10 and all(w.created for w in again.woken)
        for task_id in tasks:
            done = await wait_done(client, task_id)
            assert done.status == task_pb2.TASK_STATUS_COMPLETED and done.result.struct_value.fields["go"].bool_value
            assert await signals_received(client, task_id) == 1
        published = mcp(address, "event", "publish", "all.clear", "--request-id", "cut-w")
        assert published.returncode == 0 and "no step that waits for it now took it" in published.stdout
    finally:
        await client.channel.close()
        process.terminate()
        process.wait(timeout=15)
