"""A full store: Redis (a node, every master of a cluster) at maxmemory with noeviction, SQLite with
no room left.

The server stays up; a submission is refused RESOURCE_EXHAUSTED `STORE_FULL` and stores nothing;
reads still answer; a running task keeps its state in memory and writes it again until the store
takes it; the outage is logged where it starts and where it ends, not on every retry. Once there
is room every task finishes, no step called twice, and the refused submission goes through when
sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass

import grpc
import pytest
import redis
from google.protobuf import duration_pb2

from mcp_sdk.proto import protocol_pb2, protocol_pb2_grpc, registry_pb2, task_pb2, workflow_pb2
from mcp_server.api.server import RunningServer
from mcp_server.state import open_store
from mcp_server.state.sqlite.database import SqliteDatabase
from tests.conftest import Client, client_for, spawn_plugin
from tests.e2e.test_server_process import free_port
from tests.helpers import (
    create,
    error_reason,
    events,
    protocol_listed,
    run,
    step,
    step_states,
    submit,
    wait_done,
    workflow,
)
from tests.support.redis_cluster import LocalCluster
from tests.support.redis_server import start_private_redis

pytestmark = pytest.mark.asyncio
E = task_pb2.TaskEventType
PAD = "p" * 60_000  # each step's output holds it: a write that needs room
WORKFLOW = workflow(
    "fills-the-store",
    {
        "id": "root",
        "sequence": {
            "children": [step(f"s{i}", "chaos", "{'action': 'slow', 'ms': 250, 'pad': input.pad}") for i in range(4)]
        },
    },
)


@dataclass
class FillableStore:
    """A store URL, and a way to take away and give back its room."""

    url: str
    fill: Callable[[RunningServer], Awaitable[None]]
    free: Callable[[RunningServer], Awaitable[None]]
    # no room beyond what it holds now, so that deleting makes room (None: not on a cluster, where
    # the room a deletion frees is on its own master)
    fill_exactly: Callable[[RunningServer], Awaitable[None]] | None = None


@pytest.fixture(params=["sqlite", "redis", "redis-cluster"])
async def fillable(request: pytest.FixtureRequest, tmp_path: object) -> AsyncIterator[FillableStore]:
    if request.param == "sqlite":

        def database(running: RunningServer) -> SqliteDatabase:
            db = running.orchestrator.store.connection
            assert isinstance(db, SqliteDatabase)
            return db

        async def fill_file(running: RunningServer) -> None:  # no page beyond those it has
            await database(running).run(
                lambda c: c.execute(f"PRAGMA max_page_count = {c.execute('PRAGMA page_count').fetchone()[0]}")
            )

        async def free_file(running: RunningServer) -> None:
            await database(running).run(lambda c: c.execute("PRAGMA max_page_count = 1073741823"))

        yield FillableStore(f"sqlite:///{tmp_path}/store.db", fill_file, free_file, fill_file)
        return
    if request.param == "redis-cluster":  # the session's cluster: every master filled, then freed
        cluster: LocalCluster = request.getfixturevalue("redis_cluster")
        masters = [redis.Redis(port=port) for port in cluster.masters()]

        async def fill_masters(running: RunningServer) -> None:
            for master in masters:
                fill_redis(master)

        async def free_masters(running: RunningServer) -> None:
            for master in masters:
                master.config_set("maxmemory", "0")

        try:
            yield FillableStore(str(request.getfixturevalue("cluster_url")), fill_masters, free_masters)
        finally:
            for master in masters:
                master.config_set("maxmemory", "0")
                master.close()
        return
    with private_redis(str(tmp_path)) as (url, admin):

        async def fill_memory(running: RunningServer) -> None:
            fill_redis(admin)

        async def free_memory(running: RunningServer) -> None:
            admin.config_set("maxmemory", "0")

        async def fill_to_what_it_holds(running: RunningServer) -> None:
            admin.config_set("maxmemory-policy", "noeviction")
            admin.config_set("maxmemory", str(admin.info("memory")["used_memory"]))

        yield FillableStore(url, fill_memory, free_memory, fill_to_what_it_holds)


@contextlib.contextmanager
def private_redis(directory: str) -> Iterator[tuple[str, redis.Redis]]:
    """A Redis of the test's own (its memory limit is changed), and a client to administer it."""
    port = free_port()
    process = start_private_redis(port, directory)
    admin = redis.Redis(port=port)
    try:
        yield f"redis://127.0.0.1:{port}/0", admin
    finally:
        admin.close()
        process.terminate()
        process.wait(timeout=10)


def fill_redis(admin: redis.Redis) -> None:
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", "1")  # below what it holds: every write that needs memory is refused


async def until_step_starts(client: Client, task_id: str, path: str) -> None:
    async for event in client.tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=task_id)):
        if event.type == E.TASK_EVENT_TYPE_STEP_STARTED and event.step_path == path:
            return


async def calls_of_each_step(client: Client, task_id: str) -> list[float]:
    """How many calls the chaos plugin had seen of each step (by its idempotency key) when it answered."""
    full = (await client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=task_id, view=task_pb2.TASK_VIEW_FULL))).task
    return [s.output.struct_value.fields["calls_seen"].number_value for s in full.steps if "/" in s.path]


async def test_a_full_store_refuses_submissions_pauses_runs_and_loses_nothing(
    fillable: FillableStore, server_factory: Callable[..., Awaitable[RunningServer]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="mcp_server.engine.paused_runs")
    running = await server_factory(store=fillable.url)
    client = client_for(running)
    await create(client, WORKFLOW)
    request_id = f"before-full-{uuid.uuid4().hex}"  # the plugin counts calls by task across tests
    first = await submit(client, WORKFLOW.workflow_id, {"pad": PAD}, request_id=request_id)
    await until_step_starts(client, first.task_id, "root/s1")

    await fillable.fill(running)
    retried = await submit(client, WORKFLOW.workflow_id, {"pad": PAD}, request_id=request_id)
    assert retried.task_id == first.task_id  # a retry of a stored submission is answered, full or not
    refused = task_pb2.SubmitTaskRequest(workflow_id=WORKFLOW.workflow_id, request_id="while-full")
    refused.input_data.update({"pad": PAD})
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.tasks.SubmitTask(refused)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_reason(err.value) == "STORE_FULL"
    assert "nothing was written" in (err.value.details() or "")

    paused = running.orchestrator.dispatcher.runner.paused_runs
    async with asyncio.timeout(15):  # the running task's next checkpoint is refused: it waits to write
        while len(paused) == 0:
            await asyncio.sleep(0.05)
    await asyncio.sleep(2.5)  # past a retry or two of that write
    await running.orchestrator.sampler.sample()
    assert running.orchestrator.metrics.paused._value.get() == 1  # mcp_tasks_paused
    seen = (await client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=first.task_id))).task  # reads answer
    assert seen.status == task_pb2.TASK_STATUS_RUNNING

    await fillable.free(running)
    done = await wait_done(client, first.task_id, timeout=30)
    assert done.status == task_pb2.TASK_STATUS_COMPLETED, done.error
    log = await events(client, first.task_id)
    assert [e.sequence for e in log] == list(range(1, len(log) + 1))
    completed = [e for e in log if e.type == E.TASK_EVENT_TYPE_STEP_COMPLETED]
    assert [e.step_path for e in completed] == [*(f"root/s{i}" for i in range(4)), "root"]
    assert await calls_of_each_step(client, first.task_id) == [1, 1, 1, 1]  # the paused run kept its state
    assert len(paused) == 0
    await running.orchestrator.sampler.sample()
    assert running.orchestrator.metrics.paused._value.get() == 0

    again = (await client.tasks.SubmitTask(refused)).task  # the refused submission, sent again
    assert (await wait_done(client, again.task_id, timeout=30)).status == task_pb2.TASK_STATUS_COMPLETED
    outage = [r.getMessage() for r in caplog.records if r.name == "mcp_server.engine.paused_runs"]
    assert len([m for m in outage if m.startswith("the store refuses calls")]) == 1, outage
    assert len([m for m in outage if m.startswith("the store answers again")]) == 1, outage
    await client.channel.close()


async def test_a_replica_waiting_out_a_full_redis_keeps_its_leases(
    server_factory: Callable[..., Awaitable[RunningServer]], tmp_path: object
) -> None:
    """Without renewals the other replica would put the task back in the queue once its lease ran
    out, and run it from its last write: the step whose end the full store refused, called again."""
    with private_redis(str(tmp_path)) as (url, admin):
        replicas = [await server_factory(store=url) for _ in range(2)]
        client = client_for(replicas[0])
        await create(client, WORKFLOW)
        task = await submit(client, WORKFLOW.workflow_id, {"pad": PAD})
        await until_step_starts(client, task.task_id, "root/s1")
        fill_redis(admin)
        await asyncio.sleep(3 * replicas[0].orchestrator.settings.lease_seconds)  # leases run out thrice over
        admin.config_set("maxmemory", "0")
        done = await wait_done(client, task.task_id, timeout=30)
        assert done.status == task_pb2.TASK_STATUS_COMPLETED, done.error
        assert await calls_of_each_step(client, task.task_id) == [1, 1, 1, 1]
        assert sum(r.orchestrator.metrics.takeovers._value.get() for r in replicas) == 0
        for running in replicas:  # before its Redis goes
            await running.stop(0.5)
        await client.channel.close()


def parallel_of(workflow_id: str, *branches: dict[str, object]) -> workflow_pb2.Workflow:
    return workflow(workflow_id, {"id": "fan", "parallel": {"children": list(branches)}})


async def test_steps_store_calls_wait_out_a_full_store(
    fillable: FillableStore, server_factory: Callable[..., Awaitable[RunningServer]]
) -> None:
    """A step's own calls to the store (its cache, rate-limit units) wait like a checkpoint; before,
    the first one refused failed the task INTERNAL."""
    running = await server_factory(store=fillable.url)
    client = client_for(running)
    key = f"full-{uuid.uuid4().hex[:6]}"
    period = duration_pb2.Duration(seconds=2)
    await client.registry.PutRateLimit(
        registry_pb2.PutRateLimitRequest(rate_limit=registry_pb2.RateLimit(key=key, limit=1, period=period))
    )
    limited = "{'action': 'slow', 'ms': %d, 'tag': '%s'}"
    wf = parallel_of(
        "steps-meet-a-full-store",
        # the output is kept in the cache after the call, with the store full
        step("cached", "chaos", "{'action': 'slow', 'ms': 400, 'pad': input.pad}", cache={"ttl": "60s"}),
        # one takes the unit, the other asks again in 2 s, with the store full
        step("first", "chaos", limited % (3000, "first"), rate_limits=[{"key": key}]),
        step("second", "chaos", limited % (10, "second"), rate_limits=[{"key": key}]),
    )
    await create(client, wf)
    task = await submit(client, wf.workflow_id, {"pad": PAD})
    await until_step_starts(client, task.task_id, "fan/cached")
    await fillable.fill(running)
    await asyncio.sleep(4)
    await fillable.free(running)
    done = await wait_done(client, task.task_id, timeout=30)
    assert done.status == task_pb2.TASK_STATUS_COMPLETED, done.error
    assert await calls_of_each_step(client, task.task_id) == [1, 1, 1]
    again = await submit(client, wf.workflow_id, {"pad": PAD})  # the first run's output was kept
    steps = step_states(await wait_done(client, again.task_id, timeout=30))
    assert steps["fan/cached"].cached and steps["fan/cached"].cached_from == task.task_id


async def test_a_redis_that_may_evict_keys_is_warned_of_at_start(
    tmp_path: object, caplog: pytest.LogCaptureFixture
) -> None:
    """Any maxmemory-policy but noeviction lets Redis drop task keys when memory runs short."""
    caplog.set_level(logging.WARNING, logger="mcp_server.state.redis")
    with private_redis(str(tmp_path)) as (url, admin):
        for policy, warned in (("allkeys-lru", True), ("volatile-ttl", True), ("noeviction", False)):
            admin.config_set("maxmemory-policy", policy)
            caplog.clear()
            store = await open_store(url)
            await store.close()
            said = [r.getMessage() for r in caplog.records if "maxmemory-policy" in r.getMessage()]
            assert bool(said) == warned, (policy, said)
            if warned:
                assert said[0].startswith(f"Redis's maxmemory-policy is {policy}:"), said


async def test_a_cluster_master_that_may_evict_keys_is_warned_of_at_start(
    redis_cluster: LocalCluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="mcp_server.state.redis")
    master = redis.Redis(port=redis_cluster.masters()[1])
    try:
        master.config_set("maxmemory-policy", "volatile-lru")
        store = await open_store(f"{redis_cluster.url}?prefix=evict-{uuid.uuid4().hex[:6]}:")
        await store.close()
    finally:
        master.config_set("maxmemory-policy", "noeviction")
        master.close()
    said = [r.getMessage() for r in caplog.records if "maxmemory-policy" in r.getMessage()]
    assert said and said[0].startswith("Redis's maxmemory-policy is volatile-lru:"), said


async def test_capacity_held_through_a_full_redis_is_not_given_to_another_replica(
    server_factory: Callable[..., Awaitable[RunningServer]], tmp_path: object
) -> None:
    """One GPU, a call holding it on one replica while Redis is full for longer than a lease, a
    call waiting for it on another. The holder's grant is renewed through the outage (before, it
    lapsed, and whichever asked first once memory was freed, the waiter or the holder's renewal,
    decided whether the GPU ran two calls); the GPU never runs two."""
    box = spawn_plugin("tests.support.gpu_plugin", "127.0.0.1:0", "--capacity", "gpus=1")
    try:
        with private_redis(str(tmp_path)) as (url, admin):
            replicas = [
                await server_factory(store=url, extra_plugins=(box.address,), session_plugins=False) for _ in range(2)
            ]
            clients = [client_for(r) for r in replicas]
            lease = replicas[0].orchestrator.settings.lease_seconds
            render = workflow("one-gpu", step("r", "render", "{'ms': input.ms, 'tag': input.tag}"))
            await create(clients[0], render)
            holder = await submit(clients[0], "one-gpu", {"ms": (3 * lease + 2) * 1000, "tag": "holder"})
            await until_step_starts(clients[0], holder.task_id, "r")
            await asyncio.sleep(0.5)  # the holder's call is on the GPU
            waiter = await submit(clients[1], "one-gpu", {"ms": 10, "tag": "waiter"})
            await asyncio.sleep(0.5)
            fill_redis(admin)
            await asyncio.sleep(3 * lease)  # the holder's grant would lapse thrice over
            # the ledger still holds it: the first ask after the store frees cannot take it
            grants = admin.zrange("mcp:{cap}:g", 0, -1, withscores=True)
            assert grants and all(expiry / 1000 > time.time() for _, expiry in grants), grants
            admin.config_set("maxmemory", "0")
            for client, task in ((clients[0], holder), (clients[1], waiter)):
                done = await wait_done(client, task.task_id, timeout=60)
                assert done.status == task_pb2.TASK_STATUS_COMPLETED, done.error
            async with grpc.aio.insecure_channel(box.address) as channel:
                request = protocol_pb2.ExecuteRequest(protocol="gpu_stats")
                stats = (await protocol_pb2_grpc.ProtocolServiceStub(channel).Execute(request)).output
            assert stats.fields["max_in_flight"].number_value == 1, stats
            for running in replicas:  # before their Redis goes
                await running.stop(0.5)
            for client in clients:
                await client.channel.close()
    finally:
        box.process.terminate()
        box.process.wait(timeout=10)


async def test_registrations_outlive_a_full_redis(
    server_factory: Callable[..., Awaitable[RunningServer]], tmp_path: object
) -> None:
    """A full Redis refuses renewals but still lets the registry be read and pruned: no instance
    may be judged expired meanwhile (before, each was dropped once its TTL ran out)."""
    with private_redis(str(tmp_path)) as (url, admin):
        running = await server_factory(store=url, plugin_ttl_seconds=2.0, health_probe_seconds=0.3)
        client = client_for(running)
        assert await protocol_listed(client, "echo")
        fill_redis(admin)
        seen = []
        for _ in range(50):  # 5 s full, then 3 s after: TTLs of 2 s, upkeep rounds every 0.3 s
            seen.append(await protocol_listed(client, "echo"))
            await asyncio.sleep(0.1)
        admin.config_set("maxmemory", "0")
        for _ in range(30):
            seen.append(await protocol_listed(client, "echo"))
            await asyncio.sleep(0.1)
        assert all(seen), seen
        done = await run(client, workflow("echo-after-full", step("e", "echo", "{'x': 1}")))  # calls find the plugin
        assert done.status == task_pb2.TASK_STATUS_COMPLETED, done.error
        await running.stop(0.5)  # before its Redis goes
        await client.channel.close()


async def test_deleting_finished_tasks_answers_in_a_full_store_and_makes_room(
    fillable: FillableStore, server_factory: Callable[..., Awaitable[RunningServer]]
) -> None:
    """An operator's lever when the store is full: DeleteTask only removes, so a full store takes
    it; on the embedded store and a Redis node the room it frees takes a refused submission."""
    running = await server_factory(store=fillable.url)
    client = client_for(running)
    await create(client, WORKFLOW)
    finished = [await submit(client, WORKFLOW.workflow_id, {"pad": PAD}) for _ in range(4)]
    for task in finished:
        assert (await wait_done(client, task.task_id, timeout=60)).status == task_pb2.TASK_STATUS_COMPLETED
    await (fillable.fill_exactly or fillable.fill)(running)
    refused = task_pb2.SubmitTaskRequest(workflow_id=WORKFLOW.workflow_id, request_id=f"full-{uuid.uuid4().hex}")
    refused.input_data.update({"pad": PAD * 4})
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.tasks.SubmitTask(refused)
    assert error_reason(err.value) == "STORE_FULL"

    for task in finished:
        assert (await client.tasks.DeleteTask(task_pb2.DeleteTaskRequest(task_id=task.task_id))).deleted
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=task.task_id))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    if fillable.fill_exactly is not None:
        refused.input_data.update({"pad": PAD})  # what the four held is room for this one, run to its end
        made = (await client.tasks.SubmitTask(refused)).task
        assert (await wait_done(client, made.task_id, timeout=60)).status == task_pb2.TASK_STATUS_COMPLETED
    await fillable.free(running)
    await client.channel.close()
