"""Bursts of calls against real processes. gRPC's C core sheds calls that have arrived but that
the event loop has not taken up yet (past 1,000 by default, at random; the client sees a bare
CANCELLED): a burst of 3,000 lost 13-20% of its calls to a plugin and to the orchestrator. Both
now let 20,000 wait (`MCP_MAX_PENDING_CALLS`, the plugin's `--max-pending-calls`)."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable

import grpc
import pytest

from mcp_sdk.proto import protocol_pb2, protocol_pb2_grpc, task_pb2, task_pb2_grpc
from tests.conftest import spawn_plugin
from tests.e2e.test_server_process import free_port
from tests.support.processes import start_orchestrator

pytestmark = pytest.mark.asyncio
BURST = 3000


async def outcomes(calls: Callable[[int], Awaitable[object]]) -> collections.Counter[str]:
    async def one(i: int) -> str:
        try:
            await calls(i)
            return "OK"
        except grpc.aio.AioRpcError as exc:
            return exc.code().name

    return collections.Counter(await asyncio.gather(*(one(i) for i in range(BURST))))


async def plugin_burst(*extra: str) -> collections.Counter[str]:
    plugin = spawn_plugin("protocol_plugins.testkit", "127.0.0.1:0", *extra)
    try:
        async with grpc.aio.insecure_channel(plugin.address) as channel:
            stub = protocol_pb2_grpc.ProtocolServiceStub(channel)
            request = protocol_pb2.ExecuteRequest(protocol="sleep")
            request.input.update({"ms": 100})
            return await outcomes(lambda i: stub.Execute(request, timeout=60))
    finally:
        plugin.process.terminate()
        plugin.process.wait(timeout=10)


async def orchestrator_burst(**env: str) -> collections.Counter[str]:
    address = f"127.0.0.1:{free_port()}"
    process = start_orchestrator(address, "sqlite://:memory:", [], "burst", **env)
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = task_pb2_grpc.TaskServiceStub(channel)
            return await outcomes(lambda i: stub.ListTasks(task_pb2.ListTasksRequest(page_size=1), timeout=60))
    finally:
        process.terminate()
        process.wait(timeout=15)


async def test_a_plugin_serves_every_call_of_a_burst():
    assert await plugin_burst() == {"OK": BURST}


async def test_the_orchestrator_answers_every_call_of_a_burst():
    assert await orchestrator_burst() == {"OK": BURST}


async def test_the_pending_call_limits_are_what_sheds_a_burst():
    """With the limit set low again, the same bursts lose calls: the settings are what holds them."""
    for seen in (
        await plugin_burst("--max-pending-calls", "100"),
        await orchestrator_burst(MCP_MAX_PENDING_CALLS="100"),
    ):
        assert seen["CANCELLED"] > 0 and seen["OK"] > 0 and seen.total() == BURST


async def test_the_sdk_client_asks_again_for_calls_a_server_shed():
    """A server left at a low pending-call limit sheds part of a burst with CANCELLED; the SDK's
    retry policy asks again for those, so every call of the burst is answered."""
    from mcp_sdk.client import Client

    address = f"127.0.0.1:{free_port()}"
    process = start_orchestrator(address, "sqlite://:memory:", [], "shedding", MCP_MAX_PENDING_CALLS="400")
    try:
        async with Client(address) as client:
            answered = await asyncio.gather(*(client.list_tasks(page_size=1) for _ in range(BURST)))
        assert len(answered) == BURST
        async with grpc.aio.insecure_channel(address) as channel:  # without the SDK the same server sheds
            stub = task_pb2_grpc.TaskServiceStub(channel)
            raw = await outcomes(lambda i: stub.ListTasks(task_pb2.ListTasksRequest(page_size=1), timeout=60))
        assert raw["CANCELLED"] > 0
    finally:
        process.terminate()
        process.wait(timeout=15)
