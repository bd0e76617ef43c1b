"""Protocol capacity with real processes: plugin instances that offer one GPU each, orchestrator
replicas on one Redis, kill -9 of either. Every call is admitted only where its GPU is free,
in task-priority order, and capacity held by a dead replica comes back within a lease."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import grpc
import pytest

from mcp_sdk.proto import protocol_pb2, protocol_pb2_grpc, registry_pb2, task_pb2, workflow_pb2
from mcp_server.engine.values import struct_to_dict
from tests.conftest import PluginProc, client_for, client_for_address, spawn_plugin
from tests.e2e.test_server_process import free_port
from tests.helpers import create, error_reason, events, run, step, step_states, submit, violations, wait_done, workflow
from tests.support.processes import start_orchestrator

pytestmark = pytest.mark.asyncio
E = task_pb2.TaskEventType
GPU_BOX = "tests.support.gpu_plugin"


@pytest.fixture
def gpu_boxes() -> Any:
    boxes = [spawn_plugin(GPU_BOX, "127.0.0.1:0", "--capacity", "gpus=1") for _ in range(2)]
    yield boxes
    for box in boxes:
        if box.process.poll() is None:
            box.process.terminate()
            box.process.wait(timeout=10)


async def stats(box: PluginProc, reset: bool = False) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(box.address) as channel:
        request = protocol_pb2.ExecuteRequest(protocol="gpu_stats")
        request.input.update({"reset": reset})
        return struct_to_dict((await protocol_pb2_grpc.ProtocolServiceStub(channel).Execute(request)).output)


def fan(workflow_id: str, branches: int, ms: int, protocol: str = "render") -> workflow_pb2.Workflow:
    children = [step(f"g{i}", protocol, f"{{'ms': {ms}, 'tag': '{workflow_id}-g{i}'}}") for i in range(branches)]
    return workflow(workflow_id, {"id": "fan", "parallel": {"children": children}})


async def test_instances_never_run_more_than_their_capacity_across_three_replicas(gpu_boxes, redis_url):
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    replicas = [
        start_orchestrator(a, redis_url, [b.address for b in gpu_boxes], f"cap{i}") for i, a in enumerate(addresses)
    ]
    clients = [client_for_address(a) for a in addresses]
    try:
        await create(clients[0], fan("four", 4, 100))
        started = time.perf_counter()
        tasks = [await submit(clients[i % 3], "four") for i in range(20)]
        done = await asyncio.gather(*(wait_done(clients[i % 3], t.task_id, timeout=60) for i, t in enumerate(tasks)))
        wall = time.perf_counter() - started
        assert all(t.status == task_pb2.TASK_STATUS_COMPLETED for t in done)
        seen = [await stats(box) for box in gpu_boxes]
        assert [s["max_in_flight"] for s in seen] == [1, 1]  # never two calls on one GPU
        assert all(s["calls"] for s in seen) and sum(len(s["calls"]) for s in seen) == 80  # both instances served
        assert wall >= 0.95 * 80 * 0.1 / 2  # 80 calls of 100 ms on two GPUs cannot take less
        waited = [
            e for t in done[:5] for e in await events(clients[0], t.task_id) if e.type == E.TASK_EVENT_TYPE_STEP_WAITING
        ]
        assert waited and "1 gpus" in waited[0].message
    finally:
        for client in clients:
            await client.channel.close()
        for process in replicas:
            process.terminate()
            process.wait(timeout=15)


async def until_event(client: Any, task_id: str, kind: int, timeout: float = 20.0) -> None:
    """Follow the task until an event of `kind` arrives."""
    async with asyncio.timeout(timeout):
        async for event in client.tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=task_id)):
            if event.type == kind:
                return
    raise AssertionError(f"task {task_id} ended without event {kind}")


async def test_a_high_priority_task_submitted_last_gets_the_gpu_next(server_factory, gpu_boxes):
    box = gpu_boxes[0]
    running = await server_factory(store="sqlite://:memory:", session_plugins=False, extra_plugins=(box.address,))
    client = client_for(running)
    await create(client, workflow("job", step("r", "render", "{'ms': input.ms, 'tag': input.tag}")))
    await stats(box, reset=True)
    # low0 holds the GPU long enough for everything below to queue behind it, however slow the machine
    holder = await submit(client, "job", {"tag": "low0", "ms": 2500}, priority=0)
    await until_event(client, holder.task_id, E.TASK_EVENT_TYPE_STEP_STARTED)
    for i in range(1, 4):
        waiting = await submit(client, "job", {"tag": f"low{i}", "ms": 100}, priority=0)
        await until_event(client, waiting.task_id, E.TASK_EVENT_TYPE_STEP_WAITING)
    urgent = await submit(client, "job", {"tag": "high", "ms": 100}, priority=9)
    await until_event(client, urgent.task_id, E.TASK_EVENT_TYPE_STEP_WAITING)
    assert (await stats(box))["calls"] == ["low0"]  # all four queued while low0 still held the GPU
    done = await wait_done(client, urgent.task_id, timeout=30)
    assert done.status == task_pb2.TASK_STATUS_COMPLETED
    assert (await stats(box))["calls"][:2] == ["low0", "high"]
    await client.channel.close()


async def test_capacity_held_by_a_killed_replica_comes_back_within_a_lease(gpu_boxes, redis_url):
    box = gpu_boxes[0]
    first, second = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    doomed = start_orchestrator(first, redis_url, [box.address], "doomed", MCP_LEASE_SECONDS="1.5")
    survivor = start_orchestrator(second, redis_url, [box.address], "survivor", MCP_LEASE_SECONDS="1.5")
    a, b = client_for_address(first), client_for_address(second)
    try:
        await create(a, workflow("hold", step("r", "render", "{'ms': 20000, 'tag': 'held'}")))
        await create(a, workflow("quick", step("r", "render", "{'ms': 50, 'tag': 'after'}")))
        held = await submit(a, "hold")
        async for event in a.tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=held.task_id)):
            if event.type == E.TASK_EVENT_TYPE_STEP_STARTED and event.step_path == "r":
                break
        await asyncio.sleep(0.3)  # the call runs: the GPU is held by `doomed`
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(timeout=10)
        box.process.terminate()  # the GPU's work dies with the replica that asked for it
        box.process.wait(timeout=10)
        reborn = spawn_plugin(GPU_BOX, box.address, "--capacity", "gpus=1")
        gpu_boxes[0] = reborn
        quick = await submit(b, "quick")
        done = await wait_done(b, quick.task_id, timeout=20)  # admitted once the dead replica's lease ran out
        assert done.status == task_pb2.TASK_STATUS_COMPLETED
        instance = (await b.registry.GetProtocol(registry_pb2.GetProtocolRequest(name="render"))).instances[0]
        assert instance.capacity.gpus == 1
    finally:
        await a.channel.close()
        await b.channel.close()
        for process in (doomed, survivor):
            if process.poll() is None:
                process.terminate()
                process.wait(timeout=15)


async def test_a_slice_held_by_a_killed_replica_comes_back_whole_within_a_lease(redis_url):
    """A replica holds a slice of all four GPUs of an instance, free for its next calls, and is
    killed -9: the ledger counts them as in use until the slice's lease runs out, then every
    one comes back (the other replica runs four calls at once), never more than four."""
    box = spawn_plugin(GPU_BOX, "127.0.0.1:0", "--capacity", "gpus=4")
    first, second = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    lease = {"MCP_LEASE_SECONDS": "3"}
    doomed = start_orchestrator(first, redis_url, [box.address], "doomed", MCP_CAPACITY_KEEP_SECONDS="30", **lease)
    survivor = start_orchestrator(second, redis_url, [box.address], "survivor", **lease)
    a, b = client_for_address(first), client_for_address(second)

    async def in_use() -> int:
        found = await b.registry.GetProtocol(registry_pb2.GetProtocolRequest(name="render"))
        return sum(i.capacity_in_use.gpus for i in found.instances)

    try:
        await create(a, workflow("quick", step("r", "render", "{'ms': 50, 'tag': 'quick'}")))
        await create(b, fan("four", 4, 1000))
        one = task_pb2.SubmitTaskRequest(workflow_id="quick")
        await a.tasks.RunTask(one)  # doomed learns that no call waits: from now on it asks for slices
        await asyncio.gather(*(a.tasks.RunTask(one) for _ in range(4)))
        assert await in_use() == 4  # no call runs: all four sit in doomed's slices, kept for its next calls
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(timeout=10)
        assert await in_use() == 4  # the lease (3 s) has not run out: they are still the dead replica's
        await stats(box, reset=True)
        four = await submit(b, "four")
        assert (await wait_done(b, four.task_id, timeout=30)).status == task_pb2.TASK_STATUS_COMPLETED
        assert (await stats(box))["max_in_flight"] == 4  # every unit of the slice came back
    finally:
        await a.channel.close()
        await b.channel.close()
        for process in (doomed, survivor, box.process):
            if process.poll() is None:
                process.terminate()
                process.wait(timeout=15)


async def test_a_killed_instance_s_calls_are_retried_on_the_other_one(server_factory, gpu_boxes):
    running = await server_factory(session_plugins=False, extra_plugins=tuple(b.address for b in gpu_boxes))
    client = client_for(running)
    await create(client, fan("pair", 2, 1500))
    task = await submit(client, "pair")
    await asyncio.sleep(0.6)  # both GPUs busy, one call on each
    victim, other = gpu_boxes
    victim.process.send_signal(signal.SIGKILL)
    victim.process.wait(timeout=10)
    done = await wait_done(client, task.task_id, timeout=30)
    assert done.status == task_pb2.TASK_STATUS_COMPLETED
    served = {s.output.struct_value.fields["pid"].number_value for s in done.steps if s.kind == "step"}
    assert served == {other.process.pid}
    retried = [e for e in await events(client, task.task_id) if e.type == E.TASK_EVENT_TYPE_STEP_RETRYING]
    assert len(retried) == 1 and victim.address in retried[0].message
    listed = (await client.registry.GetProtocol(registry_pb2.GetProtocolRequest(name="render"))).instances
    assert {i.address for i in listed} == {victim.address, other.address}
    assert all(
        i.breaker == registry_pb2.BREAKER_STATE_CLOSED for i in listed
    )  # one instance failing is not the protocol failing
    await client.channel.close()


async def test_calls_spread_over_instances_and_a_dead_one_is_ejected(server_factory, gpu_boxes):
    # a just-failed instance is normally tried last for 2 s; here at once, so its failures add up quickly
    running = await server_factory(
        session_plugins=False, extra_plugins=tuple(b.address for b in gpu_boxes), outlier_recent_failure_seconds=0.0
    )
    client = client_for(running)
    wf = workflow(
        "light", {"id": "m", "map": {"items": "[1,2,3,4,5,6]", "max_concurrency": 2, "body": step("s", "gpu_stats")}}
    )
    done = await run(client, wf)
    pids = {s.output.struct_value.fields["pid"].number_value for s in done.steps if s.kind == "step"}
    assert pids == {b.process.pid for b in gpu_boxes}  # least loaded first: both served
    dead, alive = gpu_boxes
    dead.process.send_signal(signal.SIGKILL)
    dead.process.wait(timeout=10)
    many = workflow(
        "after",
        {
            "id": "m",
            "map": {
                "items": "[1,2,3,4,5,6,7,8]",
                "max_concurrency": 1,
                "body": step("s", "gpu_stats", retry={"max_attempts": 3, "initial_backoff": "0.01s"}),
            },
        },
    )
    done = await run(client, many)
    assert done.status == task_pb2.TASK_STATUS_COMPLETED
    instances = {
        i.address: i
        for i in (await client.registry.GetProtocol(registry_pb2.GetProtocolRequest(name="gpu_stats"))).instances
    }
    assert (
        instances[dead.address].HasField("ejected_until")
        and instances[dead.address].health == registry_pb2.HEALTH_STATE_UNREACHABLE
    )
    assert not instances[alive.address].HasField("ejected_until")
    await client.channel.close()


async def test_a_step_waiting_for_capacity_fails_at_its_timeout_naming_the_resource(server_factory, gpu_boxes):
    running = await server_factory(session_plugins=False, extra_plugins=(gpu_boxes[0].address,))
    client = client_for(running)
    await stats(gpu_boxes[0], reset=True)
    await create(client, workflow("hog", step("r", "render", "{'ms': 3000, 'tag': 'hog'}")))
    hog = await submit(client, "hog")
    await until_event(client, hog.task_id, E.TASK_EVENT_TYPE_STEP_STARTED)
    late = await run(client, workflow("patient", step("r", "render", "{'ms': 10, 'tag': 'patient'}", timeout="0.5s")))
    assert late.status == task_pb2.TASK_STATUS_FAILED
    assert late.error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert "while it waited for 1 gpus on an instance of render" in late.error.message
    assert step_states(late)["r"].status == task_pb2.STEP_STATUS_FAILED
    assert (await stats(gpu_boxes[0]))["calls"] == ["hog"]  # the waiting call never reached the plugin
    await client.channel.close()


async def test_a_step_that_needs_more_than_any_instance_offers_is_refused_at_create(server_factory, gpu_boxes):
    running = await server_factory(session_plugins=False, extra_plugins=tuple(b.address for b in gpu_boxes))
    client = client_for(running)
    wf = workflow(
        "too-big", {"id": "root", "sequence": {"children": [step("ok", "render"), step("pair", "render_pair")]}}
    )
    for call in (
        client.workflows.CreateWorkflow(workflow_pb2.CreateWorkflowRequest(workflow=wf)),
        client.workflows.ValidateWorkflow(workflow_pb2.ValidateWorkflowRequest(workflow=wf)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_reason(err.value) == "INSUFFICIENT_CAPACITY"
        problem = violations(err.value)["workflow.root.sequence.children[1].step.protocol"]
        assert "needs 2 gpus per call" in problem and "offers 1 gpus" in problem
    await client.channel.close()


async def test_negative_capacity_or_needs_are_refused_at_registration(client):
    bad = spawn_plugin("tests.support.bad_manifest_plugin")
    try:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.registry.RegisterProtocol(registry_pb2.RegisterProtocolRequest(address=bad.address))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_reason(err.value) == "PLUGIN_MANIFEST_INVALID"
        found = violations(err.value)
        assert {
            "capacity.cpu_millis",
            "protocols[greedy].resources.gpus",
            "protocols[greedy].resources.memory_mb",
        } <= set(found)
    finally:
        bad.process.terminate()
        bad.process.wait(timeout=10)


async def test_capacity_in_use_shows_in_the_cli_and_the_metrics(server_factory, gpu_boxes):
    import json
    import subprocess
    import sys

    from tests.integration.test_observability import scrape

    port = free_port()
    box = gpu_boxes[0]
    running = await server_factory(
        session_plugins=False, extra_plugins=(box.address,), metrics_port=port, metrics_sample_seconds=0.2
    )
    client = client_for(running)
    await create(client, workflow("busy", step("r", "render", "{'ms': 8000}")))
    task = await submit(client, "busy")
    await until_event(client, task.task_id, E.TASK_EVENT_TYPE_STEP_STARTED)
    await asyncio.sleep(0.6)  # past a metrics sample (0.2 s) with the GPU held

    def cli(*args: str) -> str:
        return subprocess.run(
            [sys.executable, "-m", "mcp_server.cli.main", "--server", running.address, *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout

    table = await asyncio.to_thread(cli, "protocol", "list")
    assert "EJECTED" in table.splitlines()[0]
    render_line = next(line for line in table.splitlines() if line.startswith("render "))
    assert box.address in render_line and "gpus 1/1" in render_line
    listed = json.loads(await asyncio.to_thread(cli, "--json", "protocol", "list"))["protocols"]
    assert next(p for p in listed if p["manifest"]["name"] == "render")["capacity_in_use"] == {"gpus": 1}
    samples = await asyncio.to_thread(scrape, port)
    assert samples[f'mcp_instance_capacity{{address="{box.address}",resource="gpus"}}'] == 1
    assert samples[f'mcp_instance_capacity_in_use{{address="{box.address}",resource="gpus"}}'] == 1
    assert samples["mcp_capacity_kept_grants"] == 0  # the one grant is in use, not kept
    await client.tasks.CancelTask(task_pb2.CancelTaskRequest(task_id=task.task_id))
    await wait_done(client, task.task_id)
    await client.channel.close()
