"""A Redis outage: the server stays up and says UNAVAILABLE; running tasks pause, then finish."""

from __future__ import annotations

import asyncio
import subprocess

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mcp_server.proto import task_pb2
from tests.conftest import client_for
from tests.e2e.test_server_process import free_port
from tests.helpers import create, events, step, submit, wait_done, workflow
from tests.support.redis_server import start_private_redis

pytestmark = pytest.mark.asyncio
E = task_pb2.TaskEventType


def start_redis(port: int, directory: str) -> subprocess.Popen[bytes]:
    return start_private_redis(port, directory, persistent=True)


async def wait_for_health(health: health_pb2_grpc.HealthStub, wanted: int) -> None:
    async with asyncio.timeout(10):
        while True:
            statuses = [(await health.Check(health_pb2.HealthCheckRequest(service=s))).status
                        for s in ("", "mcp.v1.TaskService", "mcp.v1.WorkflowService", "mcp.v1.ProtocolRegistry")]
            if set(statuses) == {wanted}:
                return
            await asyncio.sleep(0.1)


async def test_tasks_pause_while_redis_is_down_and_finish_when_it_returns(server_factory, tmp_path):
    port = free_port()
    redis_process = start_redis(port, str(tmp_path))
    try:
        running = await server_factory(store=f"redis://127.0.0.1:{port}/0")
        client = client_for(running)
        wf = workflow("outage", {"id": "root", "sequence": {"children": [step(f"s{i}", "sleep", "{'ms': 300}") for i in range(4)]}})
        await create(client, wf)
        task = await submit(client, "outage")
        async for event in client.tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=task.task_id)):
            if event.type == E.TASK_EVENT_TYPE_STEP_STARTED and event.step_path == "root/s1":
                break
        redis_process.terminate()
        redis_process.wait(timeout=10)

        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=task.task_id))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "redis store unreachable" in err.value.details()
        health = health_pb2_grpc.HealthStub(client.channel)
        await wait_for_health(health, health_pb2.HealthCheckResponse.NOT_SERVING)

        redis_process = start_redis(port, str(tmp_path))
        await wait_for_health(health, health_pb2.HealthCheckResponse.SERVING)
        done = await wait_done(client, task.task_id, timeout=30)
        assert done.status == task_pb2.TASK_STATUS_COMPLETED
        log = await events(client, task.task_id)
        assert [e.sequence for e in log] == list(range(1, len(log) + 1))
        assert [e.step_path for e in log if e.type == E.TASK_EVENT_TYPE_STEP_COMPLETED][:4] == [f"root/s{i}" for i in range(4)]
        await client.channel.close()
    finally:
        redis_process.terminate()
        redis_process.wait(timeout=10)
