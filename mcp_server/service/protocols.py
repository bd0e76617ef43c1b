"""ProtocolRegistry's listing: protocol instances as the directory knows them, paged."""

from __future__ import annotations

from mcp_sdk.proto import registry_pb2
from mcp_server.engine.texts import clipped
from mcp_server.protocols.rate_limits import RateLimitGate
from mcp_server.protocols.registry import ProtocolDirectory
from mcp_server.service.access import fitting, page_size, require
from mcp_server.settings import Limits
from mcp_server.state.common import decode_token, encode_token


class Protocols:
    def __init__(self, directory: ProtocolDirectory, limits: Limits, rate_limits: RateLimitGate) -> None:
        self.directory = directory
        self.limits = limits
        self.rate_limits = rate_limits

    async def list_rate_limits(self, size: int, page_token: str) -> tuple[list[registry_pb2.RateLimit], str]:
        """Rate limits by key: `size` of them (0: as many as one response carries)."""
        size = page_size(size, self.limits) if size else self.limits.max_page_size
        after = decode_token(page_token)
        found = sorted((limit for limit in await self.rate_limits.list() if limit.key > after), key=lambda x: x.key)
        page = fitting(found[:size], self.limits)
        return page, encode_token(page[-1].key) if len(found) > len(page) else ""

    async def list_protocols(self, size: int, page_token: str) -> tuple[list[registry_pb2.RegisteredProtocol], str]:
        """Protocol instances by name then address, with health, breaker, ejection and use."""
        size = page_size(size, self.limits)
        after = decode_token(page_token)
        entries = [e for e in await self.directory.listing() if f"{e.manifest.name}\0{e.address}" > after]
        page = fitting(entries[:size], self.limits)
        return page, encode_token(f"{page[-1].manifest.name}\0{page[-1].address}") if len(entries) > len(page) else ""

    async def get_protocol(self, name: str) -> list[registry_pb2.RegisteredProtocol]:
        """Every instance of protocol `name` (NotFound when there is none); those past what one
        response carries whole come without their manifest's schemas (ListProtocols has them)."""
        require("name", name)
        instances = await self.directory.get(name)
        whole = fitting(instances, self.limits, reserved=instances[0].ByteSize())  # the response has it twice
        for instance in instances[len(whole) :]:  # past one response: listed without their schemas
            instance.manifest.ClearField("input_schema")
            instance.manifest.ClearField("output_schema")
            instance.manifest.description = clipped(instance.manifest.description)
        return instances
