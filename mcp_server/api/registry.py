"""ProtocolRegistry servicer: unpack, call the directory, pack."""

from __future__ import annotations

import grpc

from mcp_sdk.proto import registry_pb2, registry_pb2_grpc
from mcp_server.errors import FieldViolation, InvalidArgument
from mcp_server.orchestrator import Orchestrator

# its expiry must stay a time a Timestamp holds, read back by ListProtocols and the console
MAX_TTL_SECONDS = 100 * 365 * 24 * 3600


class RegistryServicer(registry_pb2_grpc.ProtocolRegistryServicer):
    def __init__(self, orchestrator: Orchestrator) -> None:
        self.orchestrator = orchestrator
        self.directory = orchestrator.directory

    async def RegisterProtocol(
        self, request: registry_pb2.RegisterProtocolRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.RegisterProtocolResponse:
        ttl = request.ttl.seconds + request.ttl.nanos / 1e9
        if not 0 <= ttl <= MAX_TTL_SECONDS:
            raise InvalidArgument(
                "ttl must be zero (no expiry) or positive, at most 100 years",
                violations=[FieldViolation("ttl", "must be zero (no expiry) or positive, at most 100 years")],
            )
        return registry_pb2.RegisterProtocolResponse(protocols=await self.directory.register(request.address, ttl))

    async def DeregisterProtocol(
        self, request: registry_pb2.DeregisterProtocolRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.DeregisterProtocolResponse:
        if not (request.name or request.address):
            raise InvalidArgument(
                "name or address is required", violations=[FieldViolation("target", "set name or address")]
            )
        return registry_pb2.DeregisterProtocolResponse(
            removed=await self.directory.deregister(request.name, request.address)
        )

    async def ListProtocols(
        self, request: registry_pb2.ListProtocolsRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.ListProtocolsResponse:
        protocols, token = await self.orchestrator.protocols.list_protocols(request.page_size, request.page_token)
        return registry_pb2.ListProtocolsResponse(protocols=protocols, next_page_token=token)

    async def GetProtocol(
        self, request: registry_pb2.GetProtocolRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.GetProtocolResponse:
        instances = await self.orchestrator.protocols.get_protocol(request.name)
        return registry_pb2.GetProtocolResponse(protocol=instances[0], instances=instances)

    async def PutRateLimit(
        self, request: registry_pb2.PutRateLimitRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.RateLimit:
        return await self.orchestrator.rate_limits.put(request.rate_limit)

    async def ListRateLimits(
        self, request: registry_pb2.ListRateLimitsRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.ListRateLimitsResponse:
        limits, token = await self.orchestrator.protocols.list_rate_limits(request.page_size, request.page_token)
        return registry_pb2.ListRateLimitsResponse(rate_limits=limits, next_page_token=token)

    async def GetRateLimit(
        self, request: registry_pb2.GetRateLimitRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.RateLimit:
        return await self.orchestrator.rate_limits.get(request.key)

    async def DeleteRateLimit(
        self, request: registry_pb2.DeleteRateLimitRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.DeleteRateLimitResponse:
        await self.orchestrator.rate_limits.delete(request.key)
        return registry_pb2.DeleteRateLimitResponse()
