"""A plugin whose handler is a plain function that computes for a while (a model's inference, a
parse of a large document) keeps serving meanwhile: the SDK runs such handlers in a worker
thread. On the event loop, one such call held every other call, Describe and the health checks
the orchestrator renews a registration by until it ended."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from google.protobuf import json_format, struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mcp_sdk.proto import protocol_pb2, protocol_pb2_grpc
from tests.conftest import spawn_plugin

pytestmark = pytest.mark.asyncio
SPIN_SECONDS = 3.0


def call(protocol: str, **data: object) -> protocol_pb2.ExecuteRequest:
    value = struct_pb2.Struct()
    json_format.ParseDict(data, value)
    return protocol_pb2.ExecuteRequest(protocol=protocol, input=value)


async def test_a_blocking_handler_does_not_hold_the_plugin():
    plugin = spawn_plugin("protocol_plugins.testkit")
    try:
        async with grpc.aio.insecure_channel(plugin.address) as channel:
            stub = protocol_pb2_grpc.ProtocolServiceStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            spinning = asyncio.ensure_future(stub.Execute(call("spin", ms=SPIN_SECONDS * 1000), timeout=30))
            await asyncio.sleep(0.3)  # the spin has begun
            assert not spinning.done()
            described = await stub.Describe(protocol_pb2.DescribeRequest(), timeout=30)
            echoed = await stub.Execute(call("echo", x=1), timeout=30)
            checked = await health.Check(health_pb2.HealthCheckRequest(), timeout=30)
            answered_at = time.monotonic()
            assert not spinning.done(), "Describe, echo and the health check waited for the spin to end"
            assert any(p.name == "spin" for p in described.protocols)
            assert echoed.output.fields["x"].number_value == 1
            assert checked.status == health_pb2.HealthCheckResponse.SERVING
            spun = await spinning
            assert spun.output.fields["rounds"].number_value > 0
            assert time.monotonic() - answered_at > 1.0  # the others answered well before it ended
    finally:
        plugin.process.kill()
        plugin.process.wait(timeout=10)


async def test_plain_handlers_run_as_many_at_once_as_the_calls_that_come():
    """asyncio's default pool (min(32, cores + 4) threads: 6 here) held a plugin whose handler waits
    on an HTTP API to 6 calls at once; the SDK's own pool takes 64 (`--handler-threads`)."""
    plugin = spawn_plugin("protocol_plugins.testkit")
    try:
        async with grpc.aio.insecure_channel(plugin.address) as channel:
            stub = protocol_pb2_grpc.ProtocolServiceStub(channel)
            await stub.Execute(call("block", reset=True), timeout=30)
            replies = await asyncio.gather(*(stub.Execute(call("block", ms=1500), timeout=60) for _ in range(40)))
            assert max(r.output.fields["most_at_once"].number_value for r in replies) == 40
    finally:
        plugin.process.kill()
        plugin.process.wait(timeout=10)


async def test_handler_threads_bound_how_many_plain_handlers_run_at_once():
    plugin = spawn_plugin("protocol_plugins.testkit", "127.0.0.1:0", "--handler-threads", "3")
    try:
        async with grpc.aio.insecure_channel(plugin.address) as channel:
            stub = protocol_pb2_grpc.ProtocolServiceStub(channel)
            replies = await asyncio.gather(*(stub.Execute(call("block", ms=300), timeout=60) for _ in range(9)))
            assert max(r.output.fields["most_at_once"].number_value for r in replies) == 3
    finally:
        plugin.process.kill()
        plugin.process.wait(timeout=10)
