"""ProtocolRegistry over real gRPC, plus health and reflection on the orchestrator."""

from __future__ import annotations

import asyncio
import sys

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from mcp_sdk.proto import protocol_pb2, registry_pb2
from tests.helpers import error_reason, violations

pytestmark = pytest.mark.asyncio


async def test_bundled_plugins_are_registered_with_their_manifests(client, plugins):
    listed = (await client.registry.ListProtocols(registry_pb2.ListProtocolsRequest())).protocols
    names = {p.manifest.name: p for p in listed}
    assert {"echo", "sleep", "emotion", "summarize", "entities", "reason"} <= set(names)
    assert names["emotion"].address == plugins["cognitive"].address
    assert names["emotion"].health == registry_pb2.HEALTH_STATE_SERVING
    assert names["emotion"].breaker == registry_pb2.BREAKER_STATE_CLOSED
    assert names["threshold_supervisor"].manifest.type == protocol_pb2.PROTOCOL_TYPE_SUPERVISOR
    got = (await client.registry.GetProtocol(registry_pb2.GetProtocolRequest(name="summarize"))).protocol
    assert got.manifest.description


async def test_listing_pages(client):
    names, token = [], ""
    while True:
        page = await client.registry.ListProtocols(registry_pb2.ListProtocolsRequest(page_size=4, page_token=token))
        names += [p.manifest.name for p in page.protocols]
        token = page.next_page_token
        if not token:
            break
    assert names == sorted(names) and len(names) == len(set(names)) > 8


async def test_registering_an_address_that_does_not_answer_is_a_clear_error(client):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.registry.RegisterProtocol(registry_pb2.RegisterProtocolRequest(address="127.0.0.1:1"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(err.value) == "PLUGIN_UNREACHABLE"
    assert "127.0.0.1:1" in err.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.registry.RegisterProtocol(registry_pb2.RegisterProtocolRequest(address="not-an-address"))
    assert "address" in violations(err.value)


async def test_deregister_then_get_is_not_found_and_register_brings_it_back(client, plugins):
    removed = await client.registry.DeregisterProtocol(
        registry_pb2.DeregisterProtocolRequest(address=plugins["cognitive"].address)
    )
    assert removed.removed == 4
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.registry.GetProtocol(registry_pb2.GetProtocolRequest(name="emotion"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    back = await client.registry.RegisterProtocol(
        registry_pb2.RegisterProtocolRequest(address=plugins["cognitive"].address)
    )
    assert {p.manifest.name for p in back.protocols} == {"emotion", "summarize", "entities", "reason"}


async def test_health_and_reflection_are_served(server):
    async with grpc.aio.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "mcp.v1.TaskService", "mcp.v1.WorkflowService", "mcp.v1.ProtocolRegistry"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        async for response in responses:
            services = {s.name for s in response.list_services_response.service}
            break
    assert {
        "mcp.v1.TaskService",
        "mcp.v1.WorkflowService",
        "mcp.v1.ProtocolRegistry",
        "grpc.health.v1.Health",
    } <= services


async def test_a_self_registration_expires_unless_renewed(client):
    from google.protobuf import duration_pb2

    from tests.conftest import spawn_plugin

    plugin = spawn_plugin("protocol_plugins.cognitive")  # an address this server does not keep registered itself
    try:
        ttl = duration_pb2.Duration(nanos=600_000_000)
        reply = await client.registry.RegisterProtocol(
            registry_pb2.RegisterProtocolRequest(address=plugin.address, ttl=ttl)
        )
        assert all(p.HasField("expire_time") for p in reply.protocols)

        async def emotion_addresses() -> set[str]:
            got = await client.registry.GetProtocol(registry_pb2.GetProtocolRequest(name="emotion"))
            return {i.address for i in got.instances}

        assert plugin.address in await emotion_addresses()
        await asyncio.sleep(2.5)  # past the TTL and past the registry cache's refresh
        assert plugin.address not in await emotion_addresses()
    finally:
        plugin.process.terminate()
        plugin.process.wait(timeout=10)


async def test_a_plugin_registers_itself_and_keeps_renewing(server, client):
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "protocol_plugins.run",
        "protocol_plugins.writing",
        "--register",
        server.address,
        "--ttl",
        "2",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        address = (await process.stdout.readline()).decode().split()[1]
        async with asyncio.timeout(10):
            while True:
                entries = {
                    (p.manifest.name, p.address): p
                    for p in (await client.registry.ListProtocols(registry_pb2.ListProtocolsRequest())).protocols
                }
                if ("critique", address) in entries:
                    break
                await asyncio.sleep(0.1)
        first_expiry = entries[("critique", address)].expire_time.ToNanoseconds()
        await asyncio.sleep(3.0)  # past the first TTL: it is still there because it renewed
        instances = (await client.registry.GetProtocol(registry_pb2.GetProtocolRequest(name="critique"))).instances
        renewed = next(i for i in instances if i.address == address)  # beside the session's own instance
        assert renewed.expire_time.ToNanoseconds() > first_expiry and len(instances) == 2
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 10)


async def test_a_server_whose_plugin_does_not_answer_fails_to_start_cleanly():
    from mcp_server.api.server import start_server
    from mcp_server.errors import FailedPrecondition
    from tests.conftest import make_settings

    with pytest.raises(FailedPrecondition, match="did not answer Describe"):
        await start_server(make_settings("sqlite://:memory:", ("127.0.0.1:1",)))


async def test_manifests_carry_resources_concurrency_and_schemas(client):
    got = (await client.registry.GetProtocol(registry_pb2.GetProtocolRequest(name="summarize"))).protocol.manifest
    assert got.resources.cpu_millis == 200 and got.resources.memory_mb == 64 and got.max_concurrency == 16
    assert [v.string_value for v in got.input_schema.fields["required"].list_value.values] == ["text"]
    assert got.version == "1.0.0" and got.type == protocol_pb2.PROTOCOL_TYPE_TRANSFORM
