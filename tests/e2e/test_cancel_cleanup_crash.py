"""A cancelled task's clean-up survives kill -9 of its replica, on both stores: real orchestrator
processes; the replica is killed while a handler runs, and a fresh one on the same store finishes
the clean-up from the handler's last write (its completed step is not called again, the body is
never run again) and ends the task CANCELLED with the first cancel's reason."""

from __future__ import annotations

import asyncio
import contextlib
import signal

import grpc
import pytest

from mcp_sdk.proto import task_pb2
from tests.conftest import client_for_address
from tests.e2e.test_server_process import free_port
from tests.helpers import create, events, plugin_stats, step, step_states, submit, wait_done, workflow
from tests.support.processes import start_orchestrator

pytestmark = pytest.mark.asyncio
E = task_pb2.TaskEventType
LEASE = {"MCP_LEASE_SECONDS": "1.5"}


def saga() -> task_pb2.Task:
    body = {"id": "b", "sequence": {"children": [step("book", "echo"), step("slow", "sleep", "{'ms': 20000}")]}}
    undo = [step("first", "echo"), step("second", "sleep", "{'ms': 4000}"), step("third", "echo")]
    handler = {"id": "undo", "sequence": {"children": undo}}
    return workflow("saga-crash", {"id": "r", "recover": {"body": body, "handler": handler, "on_cancel": True}})


async def until_started(client, task_id: str, path: str) -> None:
    async with asyncio.timeout(20):
        async for event in client.tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=task_id)):
            if event.type == E.TASK_EVENT_TYPE_STEP_STARTED and event.step_path == path:
                return


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_a_replica_killed_during_a_clean_up_leaves_it_to_the_next_to_finish(
    plugins, testkit, tmp_path, request, backend
):
    store = f"sqlite:///{tmp_path}/mcp.db" if backend == "sqlite" else request.getfixturevalue("redis_url")
    plugin = plugins["testkit"].address
    address = f"127.0.0.1:{free_port()}"
    doomed = start_orchestrator(address, store, [plugin], f"doomed-{backend}", **LEASE)
    client = client_for_address(address)
    try:
        await create(client, saga())
        task_id = (await submit(client, "saga-crash")).task_id
        await until_started(client, task_id, "r/b/slow")
        cancelling = asyncio.ensure_future(
            client.tasks.CancelTask(task_pb2.CancelTaskRequest(task_id=task_id, reason="refund it"))
        )
        await until_started(client, task_id, "r/undo/second")
        await asyncio.sleep(0.5)  # the second step's start is written (with the first's end)
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(timeout=10)
        with contextlib.suppress(grpc.aio.AioRpcError):  # its server died under it
            await cancelling
    finally:
        await client.channel.close()

    address = f"127.0.0.1:{free_port()}"
    fresh = start_orchestrator(address, store, [plugin], f"fresh-{backend}", **LEASE)
    client = client_for_address(address)
    try:
        done = await wait_done(client, task_id, timeout=40)
        assert done.status == task_pb2.TASK_STATUS_CANCELLED
        assert done.error.message == "refund it" and done.cancel_request.reason == "refund it"
        states = step_states(done)
        for path in ("r/undo/first", "r/undo/second", "r/undo/third"):
            assert states[path].status == task_pb2.STEP_STATUS_COMPLETED, path
        assert states["r/b/slow"].status == task_pb2.STEP_STATUS_CANCELLED
        calls = (await plugin_stats(testkit))["calls"]
        assert calls[f"{task_id}/r/undo/first/echo"] == 1  # completed before the kill: not called again
        assert calls[f"{task_id}/r/undo/second/sleep"] == 2  # in flight at the kill: called again
        assert calls[f"{task_id}/r/undo/third/echo"] == 1
        assert calls[f"{task_id}/r/b/book/echo"] == 1 and calls[f"{task_id}/r/b/slow/sleep"] == 1  # the body: never
        log = await events(client, task_id)
        assert [e.sequence for e in log] == list(range(1, len(log) + 1))
        assert [e.type for e in log].count(E.TASK_EVENT_TYPE_CLEANING_UP) == 1
        assert [e.type for e in log if e.type == E.TASK_EVENT_TYPE_CANCELLED] == [E.TASK_EVENT_TYPE_CANCELLED]
        assert log[-1].type == E.TASK_EVENT_TYPE_CANCELLED
    finally:
        await client.channel.close()
        fresh.terminate()
        fresh.wait(timeout=15)


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_a_rerun_of_a_clean_up_survives_kill_9_and_never_runs_the_body(
    plugins, testkit, tmp_path, request, backend
):
    """A rerun from inside a finished clean-up (docs/reruns.md) runs that clean-up again: its
    replica killed while the handler runs, the next finishes it, the body never called."""
    store = f"sqlite:///{tmp_path}/mcp.db" if backend == "sqlite" else request.getfixturevalue("redis_url")
    plugin = plugins["testkit"].address
    address = f"127.0.0.1:{free_port()}"
    doomed = start_orchestrator(address, store, [plugin], f"doomed-rerun-{backend}", **LEASE)
    client = client_for_address(address)
    try:
        await create(client, saga())
        task_id = (await submit(client, "saga-crash")).task_id
        await until_started(client, task_id, "r/b/slow")
        await client.tasks.CancelTask(task_pb2.CancelTaskRequest(task_id=task_id, reason="refund it"))
        rerun = await client.tasks.RerunTask(task_pb2.RerunTaskRequest(task_id=task_id, from_step_path="r/undo/second"))
        rerun_id = rerun.task.task_id
        await until_started(client, rerun_id, "r/undo/second")
        await asyncio.sleep(0.5)
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(timeout=10)
    finally:
        await client.channel.close()

    address = f"127.0.0.1:{free_port()}"
    fresh = start_orchestrator(address, store, [plugin], f"fresh-rerun-{backend}", **LEASE)
    client = client_for_address(address)
    try:
        done = await wait_done(client, rerun_id, timeout=40)
        assert done.status == task_pb2.TASK_STATUS_CANCELLED and done.error.message == "refund it"
        assert done.cancel_request.outcome == "done"
        states = step_states(done)
        assert states["r/undo/first"].reused and states["r/b/book"].reused
        assert states["r/undo/third"].status == task_pb2.STEP_STATUS_COMPLETED
        calls = (await plugin_stats(testkit))["calls"]
        assert calls[f"{rerun_id}/r/undo/second/sleep"] == 2  # in flight at the kill: called again
        assert calls[f"{rerun_id}/r/undo/third/echo"] == 1
        assert not {
            key for key in calls if key.startswith(f"{rerun_id}/r/b/") or key.startswith(f"{rerun_id}/r/undo/first")
        }
    finally:
        await client.channel.close()
        fresh.terminate()
        fresh.wait(timeout=15)
