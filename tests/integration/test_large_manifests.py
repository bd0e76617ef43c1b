"""Manifests are bounded, and GetProtocol answers however many instances a protocol has: each
registration of a plugin whose schemas are large was kept whole, and GetProtocol (every instance
of one protocol, in one response) passed the message limit once enough of them registered, so
no client, the console included, could look at that protocol."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from mcp_sdk.proto import protocol_pb2, protocol_pb2_grpc, registry_pb2
from mcp_server.settings import Limits
from tests.conftest import client_for
from tests.helpers import violations

pytestmark = pytest.mark.asyncio


class Described(protocol_pb2_grpc.ProtocolServiceServicer):
    """A plugin of the contract alone whose one protocol's input schema is `size` bytes."""

    def __init__(self, size: int) -> None:
        self.manifest = protocol_pb2.ProtocolManifest(name="wide", version="1.0.0", description="d" * 10_000)
        self.manifest.input_schema.update({"type": "object", "description": "s" * size})

    async def Describe(self, request, context):  # type: ignore[no-untyped-def]
        return protocol_pb2.DescribeResponse(protocols=[self.manifest])


@pytest.fixture
async def plugins_of() -> AsyncIterator:
    servers: list[grpc.aio.Server] = []

    async def start(count: int, size: int) -> list[str]:
        addresses = []
        for _ in range(count):
            server = grpc.aio.server()
            protocol_pb2_grpc.add_ProtocolServiceServicer_to_server(Described(size), server)
            addresses.append(f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}")
            await server.start()
            servers.append(server)
        return addresses

    yield start
    for server in servers:
        await server.stop(0)


async def test_a_manifest_past_the_limit_is_refused_naming_it(server_factory, plugins_of):
    client = client_for(await server_factory(session_plugins=False))
    [address] = await plugins_of(1, 300_000)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.registry.RegisterProtocol(registry_pb2.RegisterProtocolRequest(address=address))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # as for any plugin that describes itself wrongly
    assert "MCP_LIMIT_MAX_MANIFEST_BYTES" in violations(err.value)["protocols[wide]"]


async def test_get_protocol_answers_for_many_instances_with_large_manifests(server_factory, plugins_of):
    limits = Limits(max_message_bytes=1_000_000, max_event_bytes=400_000)
    client = client_for(await server_factory(session_plugins=False, limits=limits))
    addresses = await plugins_of(8, 200_000)  # 1.7 MB of manifests, past this server's 1 MB messages
    for address in addresses:
        await client.registry.RegisterProtocol(registry_pb2.RegisterProtocolRequest(address=address))
    got = await client.registry.GetProtocol(registry_pb2.GetProtocolRequest(name="wide"))
    assert sorted(i.address for i in got.instances) == sorted(addresses) and got.ByteSize() < 1_000_000
    whole = [i for i in got.instances if i.manifest.input_schema.fields]
    assert 1 <= len(whole) < 8 and all(len(i.manifest.input_schema["description"]) == 200_000 for i in whole)
    listed, token = [], ""
    while True:  # ListProtocols pages them whole
        page = await client.registry.ListProtocols(registry_pb2.ListProtocolsRequest(page_token=token))
        assert page.protocols and page.ByteSize() < 1_000_000
        listed += [p for p in page.protocols if p.manifest.input_schema.fields]
        if not (token := page.next_page_token):
            break
    assert sorted(p.address for p in listed) == sorted(addresses)
