"""ProtocolDirectory: which plugin instances serve which protocol.

A protocol may be served by many instances (plugin addresses); registering another address
adds instances, the same address replaces its own. Entries live in the store, so every
replica sees the same registry; each replica keeps a cache that it refreshes on its own
changes and every few seconds. A registration with a TTL expires, instance by instance,
unless the plugin renews it by registering again.
"""

from __future__ import annotations

import asyncio
import time

import grpc

from mcp_sdk.proto import protocol_pb2, registry_pb2
from mcp_server.engine.events import now
from mcp_server.engine.ports import CapacityLedger, RegistryStore
from mcp_server.engine.values import ValueTooDeep, message_depth
from mcp_server.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound, Unavailable
from mcp_server.protocols.breakers import BreakerBoard
from mcp_server.protocols.capacity import RESOURCES, Resources
from mcp_server.protocols.channels import ChannelPool
from mcp_server.protocols.outliers import Outliers, OutlierSettings

DESCRIBE_TIMEOUT = 5.0
# a protocol's name and version: metric labels, rate-limit keys, store keys, console text
MAX_NAME_CHARS = 128


def _name_problem(text: str, required: bool) -> str:
    """Why `text` cannot be a protocol's name (or version), or ""."""
    if not text:
        return "is required" if required else ""
    if len(text) > MAX_NAME_CHARS:
        return f"is {len(text):,} characters; at most {MAX_NAME_CHARS}"
    if not text.isprintable():
        return "holds a control character"
    return ""


def expired(entry: registry_pb2.RegisteredProtocol, at: float) -> bool:
    """Whether a registration with a TTL was not renewed in time (at `at`, Unix seconds)."""
    return entry.HasField("expire_time") and entry.expire_time.ToNanoseconds() / 1e9 < at


class ProtocolDirectory:
    """The registry of protocol instances, shared through the store."""

    def __init__(
        self,
        store: RegistryStore,
        capacity: CapacityLedger,
        channels: ChannelPool,
        breakers: BreakerBoard,
        max_value_depth: int = 32,
        outliers: OutlierSettings | None = None,
        max_manifest_bytes: int = 256 * 1024,
    ) -> None:
        self.max_manifest_bytes = max_manifest_bytes
        self.store = store
        self.capacity = capacity
        self.channels = channels
        self.breakers = breakers
        self.max_value_depth = max_value_depth
        self.outliers = Outliers(outliers)
        self.calls_in_flight: dict[str, int] = {}
        # since when (monotonic) an address has failed every call and probe, while it does
        self.unreachable_since: dict[str, float] = {}
        self._cache: dict[str, list[registry_pb2.RegisteredProtocol]] = {}
        self._health: dict[str, int] = {}
        self._refreshed = 0.0
        # Renewals fail while the store does (down, or full: a full one still answers reads): a
        # registration is not judged expired then, nor within its TTL after the store answers
        # again (when, in Unix seconds, a read last found it answering after a failure).
        self._store_failing = False
        self._store_back_at = 0.0

    async def register(self, address: str, ttl_seconds: float = 0.0) -> list[registry_pb2.RegisteredProtocol]:
        """Ask the plugin at `address` what it serves and register all of it as instances there.

        Raises InvalidArgument for an empty address and FailedPrecondition when the plugin
        does not answer Describe (with the gRPC error it gave) or describes itself wrongly."""
        if not address or ":" not in address:
            raise InvalidArgument(
                "address must be host:port",
                violations=[FieldViolation("address", "must be host:port, e.g. 127.0.0.1:50061")],
            )
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
        problems = _negatives("capacity", described.capacity)
        problems += [v for manifest in described.protocols for v in self._manifest_problems(manifest)]
        names = [manifest.name for manifest in described.protocols]
        problems += [
            FieldViolation(f"protocols[{name[:MAX_NAME_CHARS]}]", "is described more than once")
            for name in sorted({n for n in names if names.count(n) > 1})
        ]
        if problems:
            raise FailedPrecondition(
                f"plugin at {address} describes itself wrongly: {problems[0].field} {problems[0].description}",
                violations=problems,
                reason="PLUGIN_MANIFEST_INVALID",
            )
        entries = []
        for manifest in described.protocols:
            entry = registry_pb2.RegisteredProtocol(
                manifest=manifest,
                address=address,
                health=registry_pb2.HEALTH_STATE_SERVING,
                register_time=now(),
                capacity=described.capacity,
            )
            if ttl_seconds > 0:
                entry.expire_time.FromNanoseconds(int((time.time() + ttl_seconds) * 1e9))
            try:
                await self.store.put_protocol(entry)
            except Unavailable:  # a full store still answers reads: the refused renewal says it
                self._store_failing = True
                raise
            entries.append(entry)
        self.record_health(address, True)
        await self.refresh(force=True)
        return [self._decorate(e, {}) for e in entries]

    def _manifest_problems(self, manifest: protocol_pb2.ProtocolManifest) -> list[FieldViolation]:
        """What in a plugin's manifest the registry cannot accept, as violations naming the field."""
        found = [
            FieldViolation(f"protocols[{manifest.name[:MAX_NAME_CHARS]}].{field}", why)
            for field, value in (("name", manifest.name), ("version", manifest.version))
            if (why := _name_problem(value, required=field == "name"))
        ]
        found += _negatives(f"protocols[{manifest.name}].resources", manifest.resources)
        for name in ("input_schema", "output_schema"):
            depth = message_depth(getattr(manifest, name), self.max_value_depth)
            if depth > self.max_value_depth:
                found.append(
                    FieldViolation(
                        f"protocols[{manifest.name}].{name}",
                        str(ValueTooDeep("the schema", depth, self.max_value_depth)),
                    )
                )
        if (size := manifest.ByteSize()) > self.max_manifest_bytes:
            found.append(
                FieldViolation(
                    f"protocols[{manifest.name[:MAX_NAME_CHARS]}]",
                    f"the manifest is {size} bytes; at most {self.max_manifest_bytes} are allowed"
                    " (MCP_LIMIT_MAX_MANIFEST_BYTES)",
                )
            )
        if manifest.max_concurrency < 0:
            found.append(
                FieldViolation(f"protocols[{manifest.name}].max_concurrency", "must not be negative (0: no limit)")
            )
        return found

    async def deregister(self, name: str = "", address: str = "") -> int:
        """Remove every instance of protocol `name`, or every protocol at `address`."""
        removed = await self.store.delete_protocols(name=name, address=address)
        await self.refresh(force=True)
        return removed

    async def refresh(self, force: bool = False, max_age: float = 2.0) -> None:
        if not force and time.monotonic() - self._refreshed < max_age:
            return
        entries = await self.read_entries()
        at = time.time()
        cache: dict[str, list[registry_pb2.RegisteredProtocol]] = {}
        for entry in entries:
            if not self.expired(entry, at):
                cache.setdefault(entry.manifest.name, []).append(entry)
        self._cache = cache
        self._refreshed = time.monotonic()

    async def read_entries(self) -> list[registry_pb2.RegisteredProtocol]:
        """Every registration in the store, noting whether the store answered."""
        try:
            entries = await self.store.list_protocol_entries()
        except Unavailable:
            self._store_failing = True
            raise
        if self._store_failing:
            self._store_failing, self._store_back_at = False, time.time()
        return entries

    def expired(self, entry: registry_pb2.RegisteredProtocol, at: float) -> bool:
        """Whether `entry` was not renewed within its TTL, when its holder could have renewed it:
        not while the store fails, nor within the entry's TTL of the store answering again (a
        plugin that renews every third of it has renewed by then if it is alive)."""
        if not expired(entry, at) or self._store_failing:
            return False
        registered = entry.register_time.ToNanoseconds() if entry.HasField("register_time") else 0
        ttl = (entry.expire_time.ToNanoseconds() - registered) / 1e9 if registered else 0.0
        return at > self._store_back_at + max(ttl, 0.0)

    async def listing(self) -> list[registry_pb2.RegisteredProtocol]:
        """Every instance, by protocol name then address, with health, breaker, ejection and use."""
        await self.refresh()
        use = await self._use()
        return [self._decorate(e, use) for _, entries in sorted(self._cache.items()) for e in entries]

    async def get(self, name: str) -> list[registry_pb2.RegisteredProtocol]:
        """Every instance of protocol `name`; NotFound when there is none."""
        await self.refresh()
        entries = self._cache.get(name)
        if not entries:
            raise NotFound(
                f"protocol {name!r} is not registered", reason="PROTOCOL_NOT_FOUND", metadata={"protocol": name}
            )
        use = await self._use()
        return [self._decorate(e, use) for e in entries]

    def known_names(self) -> frozenset[str]:
        return frozenset(self._cache)

    def instances(self, name: str) -> list[registry_pb2.RegisteredProtocol]:
        """The unexpired instances of `name` (from the cache), by address."""
        at = time.time()
        return [e for e in self._cache.get(name, ()) if not self.expired(e, at)]

    def record_health(self, address: str, reachable: bool) -> None:
        self._health[address] = (
            registry_pb2.HEALTH_STATE_SERVING if reachable else registry_pb2.HEALTH_STATE_UNREACHABLE
        )
        if reachable:
            self.unreachable_since.pop(address, None)
            self.outliers.succeeded(address)
        else:
            self.unreachable_since.setdefault(address, time.monotonic())
            self.outliers.failed(address)

    def listed_addresses(self) -> set[str]:
        """Every address with an unexpired instance (from the cache)."""
        return {entry.address for entries in self._cache.values() for entry in entries}

    async def _use(self) -> dict[str, Resources]:
        try:
            return {a: Resources.decode(u) for a, u in (await self.capacity.capacity_in_use()).items()}
        except Exception:  # listing must work while the ledger cannot be read
            return {}

    def _decorate(
        self, entry: registry_pb2.RegisteredProtocol, use: dict[str, Resources]
    ) -> registry_pb2.RegisteredProtocol:
        view = registry_pb2.RegisteredProtocol()
        view.CopyFrom(entry)
        view.health = self._health.get(entry.address, entry.health)  # type: ignore[assignment]
        view.breaker = self.breakers.state_of(entry.manifest.name)  # type: ignore[assignment]
        view.calls_in_flight = self.calls_in_flight.get(entry.address, 0)
        if entry.address in use:
            view.capacity_in_use.CopyFrom(use[entry.address].as_capacity())
        ejected = self.outliers.ejected_until(entry.address)
        if ejected:
            view.ejected_until.FromNanoseconds(int(ejected * 1e9))
        return view

    async def keep_fresh(self, interval: float = 2.0) -> None:
        """Refresh the cache forever (run as a background task)."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.refresh(force=True)
            except Exception:  # the store may be down; the cache keeps serving until it returns
                continue


def _negatives(prefix: str, message: protocol_pb2.Capacity | protocol_pb2.ResourceRequirements) -> list[FieldViolation]:
    return [
        FieldViolation(f"{prefix}.{name}", "must not be negative") for name in RESOURCES if getattr(message, name) < 0
    ]
