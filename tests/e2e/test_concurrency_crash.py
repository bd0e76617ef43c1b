"""A concurrency key's place survives kill -9 of the replica that holds it: real orchestrator
processes on Redis; the place is freed when the dead replica's lease runs out, and the cap
still holds afterwards."""

from __future__ import annotations

import asyncio
import signal
import uuid

import pytest

from mcp_sdk.proto import task_pb2
from tests.helpers import create, submit, wait_done, workflow
from tests.support.processes import replica_set

pytestmark = pytest.mark.asyncio
E = task_pb2.TaskEventType


async def test_a_killed_replica_gives_back_its_place_under_the_cap(plugins, testkit, redis_url):
    async with replica_set(2, redis_url, [plugins["testkit"].address], "cap", MCP_LEASE_SECONDS="1.5") as (
        replicas,
        clients,
    ):
        root = {"id": "k", "step": {"protocol": "keyed", "input": "{'key': input.k, 'ms': input.ms}"}}
        await create(clients[0], workflow("capped-crash", root, concurrency={"key": "input.k", "max_running": 1}))
        key = uuid.uuid4().hex
        first = await submit(clients[0], "capped-crash", {"k": key, "ms": 1500})
        runner = None
        async for event in clients[0].tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=first.task_id)):
            if event.type == E.TASK_EVENT_TYPE_STARTED:
                runner = int(event.data.fields["replica"].string_value[-1])
            if event.type == E.TASK_EVENT_TYPE_STEP_STARTED:
                break
        assert runner is not None
        survivor = clients[1 - runner]
        second = await submit(survivor, "capped-crash", {"k": key, "ms": 50})
        await asyncio.sleep(0.3)
        queued = (await survivor.tasks.GetTask(task_pb2.GetTaskRequest(task_id=second.task_id))).task
        assert queued.status == task_pb2.TASK_STATUS_PENDING  # the key's one place is taken
        replicas[runner].send_signal(signal.SIGKILL)
        replicas[runner].wait(timeout=10)
        done_first = await wait_done(survivor, first.task_id, timeout=30)
        done_second = await wait_done(survivor, second.task_id, timeout=30)
        assert done_first.status == done_second.status == task_pb2.TASK_STATUS_COMPLETED
        # one place: the second started only once the first (resumed on the survivor) had ended
        assert done_second.start_time.ToMicroseconds() >= done_first.end_time.ToMicroseconds() - 50_000
