"""Waits survive kill -9 of every replica: tasks that wait for signals and a task that sleeps are
written WAITING; a fresh replica on the same store takes each signal once, the timer fires on
time, and every log is gap-free with one terminal event."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest
from google.protobuf import json_format, struct_pb2

from mcp_sdk.proto import task_pb2
from tests.conftest import client_for_address
from tests.e2e.test_server_process import free_port
from tests.helpers import create, step, submit, wait_done, workflow
from tests.support.processes import replica_set, start_orchestrator

pytestmark = pytest.mark.asyncio
E = task_pb2.TaskEventType
WAITERS = 20
SLEEP_SECONDS = 6.0


def approval_flow() -> task_pb2.Task:
    children = [step("draft", "echo"), {"id": "approve", "wait": {"signal": "go"}}, step("publish", "echo")]
    return workflow("approval-crash", {"id": "root", "sequence": {"children": children}})


def timer_flow() -> task_pb2.Task:
    return workflow(
        "timer-crash",
        {"id": "root", "sequence": {"children": [{"id": "nap", "sleep": {"duration": f"{SLEEP_SECONDS}s"}}]}},
    )


async def all_waiting(client, task_ids: list[str], timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while True:
            listed = await client.tasks.ListTasks(
                task_pb2.ListTasksRequest(statuses=[task_pb2.TASK_STATUS_WAITING], page_size=1000)
            )
            if set(task_ids) <= {t.task_id for t in listed.tasks}:
                return
            await asyncio.sleep(0.1)


def assert_gap_free_and_ended_once(log: list[task_pb2.TaskEvent]) -> None:
    assert [e.sequence for e in log] == list(range(1, len(log) + 1))
    ends = [e for e in log if e.type in (E.TASK_EVENT_TYPE_COMPLETED, E.TASK_EVENT_TYPE_FAILED)]
    assert [e.type for e in ends] == [E.TASK_EVENT_TYPE_COMPLETED] and ends[0] is log[-1]


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_every_replica_killed_while_tasks_wait_then_a_fresh_one_finishes_them(
    plugins, tmp_path, request, backend
):
    store = f"sqlite:///{tmp_path}/mcp.db" if backend == "sqlite" else request.getfixturevalue("redis_url")
    plugin = plugins["testkit"].address
    count = 1 if backend == "sqlite" else 2  # one process owns a SQLite file
    async with replica_set(count, store, [plugin], f"doomed-{backend}") as (replicas, clients):
        await create(clients[0], approval_flow())
        await create(clients[0], timer_flow())
        waiting = [(await submit(clients[i % count], "approval-crash", {"n": i})).task_id for i in range(WAITERS)]
        sleeper = (await submit(clients[-1], "timer-crash", {"slept": True})).task_id
        slept_at = time.time()
        await all_waiting(clients[0], [*waiting, sleeper])
        for process in replicas:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
    address = f"127.0.0.1:{free_port()}"
    fresh = start_orchestrator(address, store, [plugin], f"fresh-{backend}")
    client = client_for_address(address)
    try:
        payload = json_format.ParseDict({"ok": True}, struct_pb2.Value())
        replies = [
            await client.tasks.SignalTask(
                task_pb2.SignalTaskRequest(task_id=task_id, signal="go", payload=payload, request_id=f"go-{task_id}")
            )
            for task_id in waiting
        ]
        assert {r.step_path for r in replies} == {"root/approve"} and all(r.created for r in replies)
        for task_id in waiting:
            done = await wait_done(client, task_id, timeout=30)
            assert done.status == task_pb2.TASK_STATUS_COMPLETED
            log = [e async for e in client.tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=task_id))]
            assert_gap_free_and_ended_once(log)
            assert len([e for e in log if e.type == E.TASK_EVENT_TYPE_SIGNAL_RECEIVED]) == 1
            assert (
                len([e for e in log if e.step_path == "root/approve" and e.type == E.TASK_EVENT_TYPE_STEP_COMPLETED])
                == 1
            )
        slept = await wait_done(client, sleeper, timeout=30)
        assert slept.status == task_pb2.TASK_STATUS_COMPLETED
        fired = slept.end_time.ToNanoseconds() / 1e9
        due = next(s for s in slept.steps if s.path == "root/nap").wait.deadline.ToNanoseconds() / 1e9
        assert abs(due - slept_at - SLEEP_SECONDS) < 0.5 and 0 <= fired - due < 1.0  # on time: within a second
        assert_gap_free_and_ended_once(
            [e async for e in client.tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=sleeper))]
        )
    finally:
        await client.channel.close()
        fresh.terminate()
        fresh.wait(timeout=15)
