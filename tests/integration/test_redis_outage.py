"""A Redis outage: the server stays up and says UNAVAILABLE; running tasks pause, then finish."""

from __future__ import annotations

import asyncio
import logging
import subprocess
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import grpc
import pytest
import redis
from google.protobuf import duration_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mcp_sdk.proto import registry_pb2, task_pb2, workflow_pb2
from mcp_server.api.server import RunningServer
from mcp_server.settings import Limits
from tests.conftest import client_for, spawn_plugin
from tests.e2e.test_server_process import free_port
from tests.helpers import create, events, protocol_listed, run, step, submit, wait_done, workflow
from tests.integration.test_delete_task import holds_copy
from tests.support.redis_server import start_private_redis

pytestmark = pytest.mark.asyncio
E = task_pb2.TaskEventType


def start_redis(port: int, directory: str) -> subprocess.Popen[bytes]:
    return start_private_redis(port, directory, persistent=True)


async def wait_for_health(health: health_pb2_grpc.HealthStub, wanted: int) -> None:
    async with asyncio.timeout(10):
        while True:
            statuses = [
                (await health.Check(health_pb2.HealthCheckRequest(service=s))).status
                for s in ("", "mcp.v1.TaskService", "mcp.v1.WorkflowService", "mcp.v1.ProtocolRegistry")
            ]
            if set(statuses) == {wanted}:
                return
            await asyncio.sleep(0.1)


async def test_tasks_pause_while_redis_is_down_and_finish_when_it_returns(server_factory, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    port = free_port()
    redis_process = start_redis(port, str(tmp_path))
    try:
        running = await server_factory(store=f"redis://127.0.0.1:{port}/0")
        client = client_for(running)
        wf = workflow(
            "outage",
            {"id": "root", "sequence": {"children": [step(f"s{i}", "sleep", "{'ms': 300}") for i in range(4)]}},
        )
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
        await asyncio.sleep(3)  # the replica's loops fail again and again meanwhile

        redis_process = start_redis(port, str(tmp_path))
        await wait_for_health(health, health_pb2.HealthCheckResponse.SERVING)
        done = await wait_done(client, task.task_id, timeout=30)
        assert done.status == task_pb2.TASK_STATUS_COMPLETED
        log = await events(client, task.task_id)
        assert [e.sequence for e in log] == list(range(1, len(log) + 1))
        assert [e.step_path for e in log if e.type == E.TASK_EVENT_TYPE_STEP_COMPLETED][:4] == [
            f"root/s{i}" for i in range(4)
        ]
        # each loop that retries through the outage says so where it starts and where it ends, not every time
        said = Counter(r.getMessage().split(":")[0] for r in caplog.records if r.name.startswith("mcp_server"))
        assert said["claiming tasks fails"] == 1 and said["lease upkeep fails"] == 1, said
        assert [m for m in said if m.startswith("claiming tasks works again")], said
        await client.channel.close()
    finally:
        redis_process.terminate()
        redis_process.wait(timeout=10)


async def test_right_after_a_redis_restart_every_rpc_succeeds(server_factory, plugins, tmp_path):
    """Connections that Redis closed when it stopped are replaced on first use: after each
    restart, 50 consecutive calls of each RPC succeed, none answers UNAVAILABLE."""
    port = free_port()
    holder = [start_redis(port, str(tmp_path))]
    testkit = plugins["testkit"].address
    try:
        running = await server_factory(store=f"redis://127.0.0.1:{port}/0", limits=Limits(max_tasks_in_flight=1))
        client = client_for(running)
        await create(client, workflow("quick", step("s", "echo")))
        await create(client, workflow("hold", step("s", "sleep", "{'ms': 60000}")))
        done = await wait_done(client, (await submit(client, "quick")).task_id)
        await submit(client, "hold")  # takes the one place, so what follows stays queued
        queued = [await submit(client, "quick") for _ in range(50)]
        for i in range(50):
            await create(client, workflow(f"doomed-{i}", step("s", "echo")))
        wf = workflow("quick", step("s", "echo"))
        calls: dict[str, Callable[[int], Awaitable[Any]]] = {
            "SubmitTask": lambda i: submit(client, "quick"),
            "GetTask": lambda i: client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=done.task_id)),
            "ListTasks": lambda i: client.tasks.ListTasks(task_pb2.ListTasksRequest(page_size=10)),
            "WatchTask": lambda i: events(client, done.task_id),
            "CancelTask": lambda i: client.tasks.CancelTask(task_pb2.CancelTaskRequest(task_id=queued[i].task_id)),
            "CreateWorkflow": lambda i: create(client, wf),
            "GetWorkflow": lambda i: client.workflows.GetWorkflow(workflow_pb2.GetWorkflowRequest(workflow_id="quick")),
            "ListWorkflows": lambda i: client.workflows.ListWorkflows(workflow_pb2.ListWorkflowsRequest()),
            "ValidateWorkflow": lambda i: client.workflows.ValidateWorkflow(
                workflow_pb2.ValidateWorkflowRequest(workflow=wf)
            ),
            "DeleteWorkflow": lambda i: client.workflows.DeleteWorkflow(
                workflow_pb2.DeleteWorkflowRequest(workflow_id=f"doomed-{i}")
            ),
            "RegisterProtocol": lambda i: client.registry.RegisterProtocol(
                registry_pb2.RegisterProtocolRequest(address=testkit)
            ),
            "ListProtocols": lambda i: client.registry.ListProtocols(registry_pb2.ListProtocolsRequest()),
            "GetProtocol": lambda i: client.registry.GetProtocol(registry_pb2.GetProtocolRequest(name="echo")),
            "DeregisterProtocol": lambda i: client.registry.DeregisterProtocol(
                registry_pb2.DeregisterProtocolRequest(name=f"gone-{i}")
            ),
        }
        for name, call in calls.items():
            holder[0].terminate()
            holder[0].wait(timeout=10)
            holder[0] = start_redis(port, str(tmp_path))  # returns once it answers PING
            for i in range(50):
                try:
                    await call(i)
                except grpc.aio.AioRpcError as exc:
                    raise AssertionError(
                        f"{name} call {i + 1} after the restart: {exc.code().name} {exc.details()}"
                    ) from None
        cancelled = await client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=queued[49].task_id))
        assert cancelled.task.status == task_pb2.TASK_STATUS_CANCELLED
        await client.channel.close()
    finally:
        holder[0].terminate()
        holder[0].wait(timeout=10)


class RestartableRedis:
    """A Redis of the test's own, kept on disk (AOF), that the test stops and starts again."""

    def __init__(self, directory: str) -> None:
        self.port, self.directory = free_port(), directory
        self.process = start_redis(self.port, directory)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)

    def start(self) -> None:
        self.process = start_redis(self.port, self.directory)


@pytest.fixture
def restartable_redis(tmp_path) -> Iterator[RestartableRedis]:
    redis_server = RestartableRedis(str(tmp_path))
    yield redis_server
    redis_server.stop()


async def finishes_through_an_outage_while_a_step_waits(
    running: RunningServer, task_id: str, redis_server: RestartableRedis, seconds: float
) -> None:
    """Stop Redis once a step of the task waits (for units, for capacity), start it again after
    `seconds`, and see the task complete; then stop the server before its Redis goes."""
    client = client_for(running)
    async for event in client.tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=task_id)):
        if event.type == E.TASK_EVENT_TYPE_STEP_WAITING:
            break
    redis_server.stop()
    await asyncio.sleep(seconds)
    redis_server.start()
    done = await wait_done(client, task_id, timeout=30)
    assert done.status == task_pb2.TASK_STATUS_COMPLETED, done.error
    await running.stop(0.5)
    await client.channel.close()


async def test_a_step_waiting_for_rate_limit_units_waits_out_a_redis_outage(server_factory, restartable_redis):
    """The step asks for units again while Redis is down: it waits for Redis as a checkpoint does
    (before, the refused ask failed the task INTERNAL)."""
    running = await server_factory(store=restartable_redis.url)
    client = client_for(running)
    limit = registry_pb2.RateLimit(key="outage", limit=1, period=duration_pb2.Duration(seconds=2))
    await client.registry.PutRateLimit(registry_pb2.PutRateLimitRequest(rate_limit=limit))
    uses = [{"key": "outage"}]
    children = [
        step("first", "sleep", "{'ms': 3000}", rate_limits=uses),  # takes the unit
        step("second", "sleep", "{'ms': 10}", rate_limits=uses),  # asks again in 2 s
    ]
    await create(client, workflow("units-in-an-outage", {"id": "fan", "parallel": {"children": children}}))
    task = await submit(client, "units-in-an-outage")
    await finishes_through_an_outage_while_a_step_waits(running, task.task_id, restartable_redis, 3)
    await client.channel.close()


async def test_a_call_waiting_for_capacity_waits_out_a_redis_outage(server_factory, restartable_redis):
    """The call asks the capacity ledger again while Redis is down: it waits for Redis (before,
    the refused ask failed the task INTERNAL)."""
    box = spawn_plugin("tests.support.gpu_plugin", "127.0.0.1:0", "--capacity", "gpus=1")
    try:
        running = await server_factory(store=restartable_redis.url, extra_plugins=(box.address,))
        client = client_for(running)
        children = [step("long", "render", "{'ms': 2500}"), step("short", "render", "{'ms': 10}")]
        await create(client, workflow("gpu-in-an-outage", {"id": "fan", "parallel": {"children": children}}))
        task = await submit(client, "gpu-in-an-outage")  # one holds the GPU, the other waits for it
        await finishes_through_an_outage_while_a_step_waits(running, task.task_id, restartable_redis, 2)
        await client.channel.close()
    finally:
        box.process.terminate()
        box.process.wait(timeout=10)


async def test_registrations_outlive_a_redis_outage_longer_than_their_ttl(server_factory, restartable_redis):
    """Nobody can renew a registration while Redis is down: when it returns, the instances stay
    (before, the first upkeep round dropped every one, the server's own too, and calls found no
    plugin until the next renewals)."""
    running = await server_factory(store=restartable_redis.url, plugin_ttl_seconds=2.0, health_probe_seconds=0.3)
    client = client_for(running)
    assert await protocol_listed(client, "echo")
    restartable_redis.stop()
    await asyncio.sleep(4)  # twice the TTL
    restartable_redis.start()
    seen: list[bool] = []
    async with asyncio.timeout(20):
        while len(seen) < 30:  # 3 s: upkeep rounds every 0.3 s, renewals every 0.67 s
            try:
                seen.append(await protocol_listed(client, "echo"))
            except grpc.aio.AioRpcError:  # the first calls may still meet the outage
                pass
            await asyncio.sleep(0.1)
    assert all(seen), seen
    done = await run(client, workflow("echo-after-outage", step("e", "echo", "{'x': 1}")))  # calls find the plugin
    assert done.status == task_pb2.TASK_STATUS_COMPLETED, done.error
    await running.stop(0.5)  # before its Redis goes
    await client.channel.close()


async def test_a_parked_backoff_and_the_cache_channel_outlive_a_redis_restart(server_factory, restartable_redis):
    """Two replicas; a task parked in a 4 s retry backoff, and a cached output both replicas hold a
    copy of. Redis stops for 1.5 s and starts again: the task retries when due and completes, and
    once both replicas follow the cache channel again, deleting the output's task drops the copy
    the other replica holds."""
    url = restartable_redis.url
    replicas = [await server_factory(store=url), await server_factory(store=url)]
    clients = [client_for(r) for r in replicas]
    cached = step("s", "append", "{'text': 'kept'}", cache={"ttl": "600s"})
    await create(clients[0], workflow("kept", cached))
    retry = {"max_attempts": 2, "initial_backoff": "4s", "max_backoff": "4s", "jitter": 0.05}
    await create(clients[0], workflow("patient", step("s", "flaky", "{'failures': 1}", retry=retry)))
    stored_by = (await wait_done(clients[0], (await submit(clients[0], "kept")).task_id)).task_id
    hit = await wait_done(clients[1], (await submit(clients[1], "kept")).task_id)
    assert hit.steps[0].cached_from == stored_by and holds_copy(replicas[1], stored_by)
    task = await submit(clients[0], "patient")
    async with asyncio.timeout(10):
        while (
            await clients[0].tasks.GetTask(task_pb2.GetTaskRequest(task_id=task.task_id))
        ).task.status != task_pb2.TASK_STATUS_WAITING:
            await asyncio.sleep(0.05)

    restartable_redis.stop()
    await asyncio.sleep(1.5)
    restartable_redis.start()

    done = await wait_done(clients[0], task.task_id, timeout=30)
    assert done.status == task_pb2.TASK_STATUS_COMPLETED, done.error
    log = await events(clients[0], task.task_id)
    retried = next(e for e in log if e.type == E.TASK_EVENT_TYPE_STEP_RETRYING).time.ToNanoseconds()
    completed = next(e for e in log if e.type == E.TASK_EVENT_TYPE_STEP_COMPLETED).time.ToNanoseconds()
    assert completed - retried >= 3.7e9 and done.steps[0].attempts == 2
    admin = redis.Redis.from_url(url)
    async with asyncio.timeout(15):  # each replica subscribes again, after a pause of up to 5 s
        while admin.pubsub_numsub("mcp:cache-removed")[0][1] < 2:  # the default prefix's channel
            await asyncio.sleep(0.1)
    admin.close()
    assert (await clients[0].tasks.DeleteTask(task_pb2.DeleteTaskRequest(task_id=stored_by))).deleted
    async with asyncio.timeout(5):
        while holds_copy(replicas[1], stored_by):
            await asyncio.sleep(0.05)
    for client in clients:
        await client.channel.close()


async def test_an_owner_s_queued_bytes_and_the_finished_tasks_list_outlive_a_redis_restart(
    server_factory, restartable_redis
):
    """The state this session's shares and retention keep in Redis (each task's bytes, an owner's
    queued bytes, finished tasks by end time, the retention the store is kept with) is written by
    the scripts beside what it counts, so a Redis kept on disk brings it back whole: after a
    restart the owner's share is where it was, and a replica with a lower retention purges the task
    that finished before."""
    url = restartable_redis.url
    limits = Limits(max_tasks_in_flight=0, max_queued_bytes_per_owner=400_000)
    running = await server_factory(store=url, limits=limits, retention_seconds=3600)
    client = client_for(running)
    await create(client, workflow("big", step("s", "echo")))
    big = {"text": "b" * 150_000}

    async def refused() -> bool:
        try:
            await submit(client, "big", big)
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
            return True
        return False

    queued = [await submit(client, "big", big) for _ in range(2)]
    assert await refused()
    await client.tasks.CancelTask(task_pb2.CancelTaskRequest(task_id=queued[0].task_id))  # finished, bytes back
    keeper = running.orchestrator.store.tasks.retention
    await running.orchestrator.store.tasks.purge_finished()
    async with asyncio.timeout(10):
        while keeper.agreeing:
            await asyncio.sleep(0.01)
    assert redis.Redis.from_url(url).hget("mcp:{meta}:layout", "retention_ms") == b"3600000"

    restartable_redis.stop()
    await asyncio.sleep(1)
    restartable_redis.start()

    async with asyncio.timeout(15):  # the first calls after the restart may find it still loading
        while True:
            try:
                await asyncio.sleep(0.2)  # past the counts' 0.1 s cache
                taken = not await refused()
                break
            except grpc.aio.AioRpcError:
                continue
    assert taken  # one task's bytes were given back before the restart, and still are
    assert await refused()  # and the other two are counted: the share is where it was
    await client.channel.close()
    await running.stop(0.5)

    purging = await server_factory(store=url, limits=limits, retention_seconds=0.5, lease_seconds=0.3)
    client = client_for(purging)
    async with asyncio.timeout(15):
        while True:
            try:
                await client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=queued[0].task_id))
            except grpc.aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.NOT_FOUND
                break
            await asyncio.sleep(0.1)
    assert (await client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=queued[1].task_id))).task.status == (
        task_pb2.TASK_STATUS_PENDING
    )
    await client.channel.close()
