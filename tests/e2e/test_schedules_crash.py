"""Schedules across kill -9 and downtime, with real orchestrator processes: a killed replica's
schedules go on firing elsewhere with no fire time started twice, and a server that was down
catches up as the schedule says."""

from __future__ import annotations

import asyncio
import itertools
import signal
import uuid
from datetime import UTC, datetime

import pytest
from google.protobuf import duration_pb2

from mcp_sdk.proto import schedule_pb2, task_pb2
from tests.conftest import Client, client_for_address
from tests.e2e.test_server_process import free_port
from tests.helpers import create, step, workflow
from tests.support.processes import replica_set, start_orchestrator

pytestmark = pytest.mark.asyncio


def every_second(workflow_id: str, catchup: float = 0) -> schedule_pb2.Schedule:
    schedule = schedule_pb2.Schedule(
        schedule_id=f"tick-{uuid.uuid4().hex[:8]}",
        spec=schedule_pb2.ScheduleSpec(every=[duration_pb2.Duration(seconds=1)]),
        action=task_pb2.SubmitTaskRequest(workflow_id=workflow_id),
        overlap=schedule_pb2.OVERLAP_POLICY_ALLOW_ALL,
    )
    schedule.action.input_data.update({"ms": 10})
    if catchup:
        schedule.catchup_window.FromNanoseconds(int(catchup * 1e9))
    return schedule


def fire_seconds(tasks: list[task_pb2.Task]) -> list[int]:
    return sorted(
        int(datetime.strptime(t.labels["mcp/fire-time"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp())
        for t in tasks
    )


async def listed(client: Client, workflow_id: str) -> list[task_pb2.Task]:
    reply = await client.tasks.ListTasks(task_pb2.ListTasksRequest(workflow_id=workflow_id, page_size=1000))
    return list(reply.tasks)


async def test_firing_goes_on_after_a_replica_is_killed_and_no_fire_time_runs_twice(plugins, redis_url):
    async with replica_set(2, redis_url, [plugins["testkit"].address], "sch", MCP_LEASE_SECONDS="1.5") as (
        replicas,
        clients,
    ):
        workflow_id = f"ticks-{uuid.uuid4().hex[:6]}"
        await create(clients[0], workflow(workflow_id, step("nap", "sleep", "{'ms': input.ms}")))
        schedule = every_second(workflow_id, catchup=30)
        await clients[0].schedules.CreateSchedule(schedule_pb2.CreateScheduleRequest(schedule=schedule))
        await asyncio.sleep(2.5)
        before = len(await listed(clients[1], workflow_id))
        replicas[0].send_signal(signal.SIGKILL)
        replicas[0].wait(timeout=10)
        await asyncio.sleep(4.5)
        await clients[1].schedules.DeleteSchedule(schedule_pb2.DeleteScheduleRequest(schedule_id=schedule.schedule_id))
        found = await listed(clients[1], workflow_id)
        seconds = fire_seconds(found)
        assert len(found) >= before + 3, (before, seconds)
        # one task per fire time, and (with a catch-up window) none lost in the hand-over
        assert seconds == list(range(seconds[0], seconds[-1] + 1)), seconds


async def test_after_downtime_only_the_latest_missed_fire_time_runs_and_the_rest_are_counted(plugins, tmp_path):
    store = f"sqlite:///{tmp_path}/schedules.db"
    address = f"127.0.0.1:{free_port()}"
    process = start_orchestrator(address, store, [plugins["testkit"].address], "down")
    client = client_for_address(address)
    workflow_id = f"downtime-{uuid.uuid4().hex[:6]}"
    await create(client, workflow(workflow_id, step("nap", "sleep", "{'ms': input.ms}")))
    schedule = every_second(workflow_id)
    await client.schedules.CreateSchedule(schedule_pb2.CreateScheduleRequest(schedule=schedule))
    await asyncio.sleep(1.6)
    await client.channel.close()
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    await asyncio.sleep(4)
    process = start_orchestrator(address, store, [plugins["testkit"].address], "down")
    client = client_for_address(address)
    try:
        await asyncio.sleep(0.5)
        got = await client.schedules.GetSchedule(schedule_pb2.GetScheduleRequest(schedule_id=schedule.schedule_id))
        ran_before = len(await listed(client, workflow_id))
        assert got.info.missed >= 2, got.info
        seconds = fire_seconds(await listed(client, workflow_id))
        gaps = [b - a for a, b in itertools.pairwise(seconds)]
        assert max(gaps) >= 3, seconds  # the missed ones did not run
        assert ran_before == got.info.runs
    finally:
        await client.channel.close()
        process.terminate()
        process.wait(timeout=15)
