"""Registry upkeep: the server's own registrations, and instances that are gone.

- **Own registrations.** The plugin addresses a server registers for itself (the bundled plugins
  it starts, its `--plugin` addresses) belong to it: registered with a TTL and renewed every
  third of it while the server lives (a renewal asks the plugin's Describe again, as a
  self-registered plugin's renewal does). When the server stops, its bundled plugins (its own
  child processes, on ports no one else uses) are deregistered; its `--plugin` addresses are left
  to expire, since other replicas may share them and go on renewing them. If the server dies,
  all of them expire (and its bundled plugins exit: they watch their parent).
- **Probes.** Every instance is asked Describe with a short deadline every `probe_seconds`, so
  its health is known before a call finds out (a dead instance is tried last, then ejected).
- **Dropping.** A registration whose TTL ran out is deleted from the store; an instance with a
  TTL that has been unreachable longer than `drop_unreachable_seconds` is dropped before its TTL
  ends. Both are logged. Static registrations (no TTL, registered by hand) stay until someone
  deregisters them, whatever their health.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from mcp_sdk.proto import protocol_pb2, registry_pb2
from mcp_server.engine.failure_notes import FailureNotes
from mcp_server.errors import McpError
from mcp_server.protocols.registry import ProtocolDirectory

log = logging.getLogger(__name__)
PROBE_TIMEOUT = 2.0


@dataclass(frozen=True)
class UpkeepSettings:
    """How long the server's own registrations live unrenewed, how often instances are probed
    (0: never) and how long one may stay unreachable before it is dropped (0: never)."""

    own_ttl_seconds: float = 30.0
    probe_seconds: float = 10.0
    drop_unreachable_seconds: float = 120.0


class RegistryUpkeep:
    """Keeps this server's registrations alive and the registry free of dead instances."""

    def __init__(self, directory: ProtocolDirectory, settings: UpkeepSettings) -> None:
        self.directory = directory
        self.settings = settings
        self.bundled: tuple[str, ...] = ()
        self.static: tuple[str, ...] = ()
        self._renew_failures = FailureNotes(log, "renewing the server's own plugin registrations")
        self._upkeep_failures = FailureNotes(log, "registry upkeep")

    @property
    def own(self) -> tuple[str, ...]:
        return (*self.static, *self.bundled)

    async def register_own(self, bundled: Sequence[str], static: Sequence[str]) -> list[str]:
        """Register the server's own plugin addresses with the TTL; return a line per address."""
        self.bundled, self.static = tuple(bundled), tuple(static)
        lines = []
        for address in self.own:
            entries = await self.directory.register(address, self.settings.own_ttl_seconds)
            lines.append(f"registered {', '.join(e.manifest.name for e in entries)} at {address}")
        return lines

    async def deregister_bundled(self) -> None:
        """At stop: the bundled plugins stop with the server, so their instances go now."""
        for address in self.bundled:
            try:
                await self.directory.deregister(address=address)
            except McpError as exc:
                log.warning("could not deregister %s at stop (it expires by its TTL): %s", address, exc)

    async def keep_own_registered(self) -> None:
        """Renew the own registrations every third of their TTL, as a self-registered plugin
        does (so one deregistered by hand comes back at the next renewal, and one that stopped
        answering expires); run as a background task."""
        while True:
            await asyncio.sleep(self.settings.own_ttl_seconds / 3)
            failures = []
            for address in self.own:
                try:
                    await self.directory.register(address, self.settings.own_ttl_seconds)
                except McpError as exc:
                    failures.append(f"{address}: {exc.message}")
            if failures:
                self._renew_failures.failed("; ".join(failures))
            else:
                self._renew_failures.worked()

    async def probe_and_prune(self) -> None:
        """Probe every instance, then drop what expired or stayed unreachable too long; run as a
        background task (the first round at once)."""
        while True:
            try:
                await self.probe()
                await self.prune()
                self._upkeep_failures.worked()
            except McpError as exc:  # the store is down: the next round tries again
                self._upkeep_failures.failed(exc.message)
            await asyncio.sleep(self.settings.probe_seconds or 10.0)

    async def probe(self) -> None:
        """Ask every registered address Describe at once, and record what answered."""
        if not self.settings.probe_seconds:
            return
        addresses = sorted(self.directory.listed_addresses())
        answers = await asyncio.gather(*(self._answers(a) for a in addresses))
        for address, answered in zip(addresses, answers):
            self.directory.record_health(address, answered)

    async def _answers(self, address: str) -> bool:
        try:
            await self.directory.channels.stub(address).Describe(protocol_pb2.DescribeRequest(), timeout=PROBE_TIMEOUT)
        except grpc.aio.AioRpcError:
            return False
        return True

    async def prune(self) -> int:
        """Delete the registrations that expired, and those with a TTL unreachable for longer than
        `drop_unreachable_seconds`; log each. Returns how many went."""
        at = time.time()
        doomed: list[tuple[registry_pb2.RegisteredProtocol, str]] = []
        for entry in await self.directory.read_entries():
            if self.directory.expired(entry, at):
                doomed.append((entry, "its registration expired (not renewed within its TTL)"))
            elif entry.HasField("expire_time") and (since := self._unreachable_for(entry.address)) is not None:
                doomed.append((entry, f"unreachable for {since:.0f}s"))
        if not doomed:
            return 0
        removed = await self.directory.store.remove_protocol_entries([entry for entry, _ in doomed])
        for index in removed:
            entry, why = doomed[index]
            log.warning("dropped instance %s of protocol %s: %s", entry.address, entry.manifest.name, why)
        if removed:
            await self.directory.refresh(force=True)
        return len(removed)

    def _unreachable_for(self, address: str) -> float | None:
        limit = self.settings.drop_unreachable_seconds
        since = self.directory.unreachable_since.get(address)
        if not limit or since is None or time.monotonic() - since < limit:
            return None
        return time.monotonic() - since
