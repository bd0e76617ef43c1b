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
