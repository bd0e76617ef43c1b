"""ProtocolDirectory: which plugin address serves which protocol.

Entries live in the store, so every replica sees the same registry; each replica keeps a
cache that it refreshes on its own changes and every few seconds. A registration with a TTL
expires unless the plugin renews it by registering again.
"""

from __future__ import annotations

import asyncio
import time

import grpc

from mcp_server.engine.context import now
from mcp_server.engine.ports import Store
from mcp_server.engine.values import ValueTooDeep, message_depth
from mcp_server.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from mcp_server.proto import protocol_pb2, registry_pb2
from mcp_server.protocols.breakers import BreakerBoard
from mcp_server.protocols.channels import ChannelPool

DESCRIBE_TIMEOUT = 5.0


def _expired(entry: registry_pb2.RegisteredProtocol, at: float) -> bool:
    return entry.HasField("expire_time") and entry.expire_time.ToNanoseconds() / 1e9 < at


class ProtocolDirectory:
    """The registry of protocols, shared through the store."""

    def __init__(self, store: Store, channels: ChannelPool, breakers: BreakerBoard, max_value_depth: int = 32) -> None:
        self.store = store
        self.max_value_depth = max_value_depth
        self.channels = channels
        self.breakers = breakers
        self._cache: dict[str, registry_pb2.RegisteredProtocol] = {}
        self._health: dict[str, int] = {}
        self._refreshed = 0.0

    async def register(self, address: str, ttl_seconds: float = 0.0) -> list[registry_pb2.RegisteredProtocol]:
        """Ask the plugin at `address` what it serves and register all of it.

        Raises InvalidArgument for an empty address and FailedPrecondition when the plugin
        does not answer Describe (with the gRPC error it gave).
        """
        if not address or ":" not in address:
            raise InvalidArgument("address must be host:port", violations=[FieldViolation("address", "must be host:port, e.g. 127.0.0.1:50061")])
        stub = self.channels.stub(address)
        try:
            described = await stub.Describe(protocol_pb2.DescribeRequest(), timeout=DESCRIBE_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            await self.channels.discard(address)
            raise FailedPrecondition(
                f"plugin at {address} did not answer Describe: {exc.code().name}: {exc.details()}",
                violations=[FieldViolation("address", f"no ProtocolService answered at {address}")],
                reason="PLUGIN_UNREACHABLE",
            ) from None
        if not described.protocols:
            raise FailedPrecondition(f"plugin at {address} hosts no protocols", reason="PLUGIN_EMPTY")
        problems = [v for manifest in described.protocols for v in self._manifest_problems(manifest)]
        if problems:
            raise FailedPrecondition(f"plugin at {address} describes its protocols wrongly: {problems[0].field} {problems[0].description}",
                                     violations=problems, reason="PLUGIN_MANIFEST_INVALID")
        entries = []
        for manifest in described.protocols:
            entry = registry_pb2.RegisteredProtocol(manifest=manifest, address=address, health=registry_pb2.HEALTH_STATE_SERVING,
                                                    register_time=now())
            if ttl_seconds > 0:
                entry.expire_time.FromNanoseconds(int((time.time() + ttl_seconds) * 1e9))
            await self.store.put_protocol(entry)
            self._cache[manifest.name] = entry
            entries.append(self._decorate(entry))
        return entries

    def _manifest_problems(self, manifest: protocol_pb2.ProtocolManifest) -> list[FieldViolation]:
        """What in a plugin's manifest the registry cannot accept, as violations naming the field."""
        found = []
        for name in ("input_schema", "output_schema"):
            depth = message_depth(getattr(manifest, name), self.max_value_depth)
            if depth > self.max_value_depth:
                found.append(FieldViolation(f"protocols[{manifest.name}].{name}", str(ValueTooDeep("the schema", depth, self.max_value_depth))))
        return found

    async def deregister(self, name: str = "", address: str = "") -> int:
        removed = await self.store.delete_protocols(name=name, address=address)
        await self.refresh(force=True)
        return removed

    async def refresh(self, force: bool = False, max_age: float = 2.0) -> None:
        if not force and time.monotonic() - self._refreshed < max_age:
            return
        at = time.time()
        self._cache = {e.manifest.name: e for e in await self.store.list_protocol_entries() if not _expired(e, at)}
        self._refreshed = time.monotonic()

    async def list(self) -> list[registry_pb2.RegisteredProtocol]:
        await self.refresh()
        return [self._decorate(e) for _, e in sorted(self._cache.items())]

    async def get(self, name: str) -> registry_pb2.RegisteredProtocol:
        await self.refresh()
        entry = self._cache.get(name)
        if entry is None:
            raise NotFound(f"protocol {name!r} is not registered", reason="PROTOCOL_NOT_FOUND")
        return self._decorate(entry)

    def known_names(self) -> frozenset[str]:
        return frozenset(self._cache)

    def lookup(self, name: str) -> registry_pb2.RegisteredProtocol | None:
        entry = self._cache.get(name)
        if entry is not None and _expired(entry, time.time()):
            return None
        return entry

    def record_health(self, name: str, reachable: bool) -> None:
        self._health[name] = registry_pb2.HEALTH_STATE_SERVING if reachable else registry_pb2.HEALTH_STATE_UNREACHABLE

    def _decorate(self, entry: registry_pb2.RegisteredProtocol) -> registry_pb2.RegisteredProtocol:
        view = registry_pb2.RegisteredProtocol()
        view.CopyFrom(entry)
        view.health = self._health.get(entry.manifest.name, entry.health)  # type: ignore[assignment]
        view.breaker = self.breakers.state_of(entry.manifest.name)  # type: ignore[assignment]
        return view

    async def keep_fresh(self, interval: float = 2.0) -> None:
        """Refresh the cache forever (run as a background task)."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.refresh(force=True)
            except Exception:  # the store may be down; the cache keeps serving until it returns
                continue
