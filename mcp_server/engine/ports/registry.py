"""The registry ports: protocol instances and breaker states, and the capacity ledger, shared
by every replica through the store (see protocols/registry.py and protocols/capacity.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from mcp_sdk.proto import registry_pb2


class RegistryStore(Protocol):
    """Registered protocol instances, one entry per (protocol, address), and breaker states."""

    async def put_protocol(self, entry: registry_pb2.RegisteredProtocol) -> None:
        """Add or replace the entry of (entry.manifest.name, entry.address)."""
        ...

    async def delete_protocols(self, name: str = "", address: str = "") -> int:
        """Delete every instance of protocol `name`, or every protocol at `address`."""
        ...

    async def list_protocol_entries(self) -> list[registry_pb2.RegisteredProtocol]:
        """Every entry, expired ones included, by name then address."""
        ...

    async def remove_protocol_entries(self, entries: Sequence[registry_pb2.RegisteredProtocol]) -> list[int]:
        """Delete these entries, each only if it is stored unchanged since it was read (an entry
        renewed meanwhile stays); return the indexes (in `entries`) of those deleted."""
        ...

    async def put_breaker_state(self, protocol: str, state: str) -> None: ...

    async def breaker_states(self) -> dict[str, str]: ...


@dataclass(frozen=True)
class CapacityRequest:
    """A call asking the capacity ledger for room on one of `candidates`.

    `member` ranks it among the waiters (`<enqueued ms>:<waiter_id>`, FIFO) after `priority`;
    `needs` and each candidate's capacity are `c,m,g` strings (cpu_millis, memory_mb, gpus;
    a capacity of 0 is unlimited). A grant is held for `lease_seconds` unless renewed; a
    waiter that stops asking is forgotten after `wait_seconds`. `units` > 1 asks for a slice:
    up to that many times `needs` on one instance, as many as fit there (at least one), held as
    one grant."""

    waiter_id: str
    member: str
    priority: int
    needs: str
    candidates: Mapping[str, str]
    lease_seconds: float
    wait_seconds: float
    units: int = 1


@dataclass(frozen=True)
class CapacitySlice:
    """What the ledger granted: `units` times the asked needs on `address`, and how many calls
    of any replica wait for capacity now."""

    address: str
    units: int
    waiting: int


class CapacityLedger(Protocol):
    """What calls hold of each plugin instance's capacity, and who waits for it."""

    async def acquire_capacity(self, request: CapacityRequest) -> str | None:
        """Register or refresh the waiter, grant every waiter that fits in order, and return
        the instance granted to this one (None: ask again later)."""
        ...

    async def acquire_capacity_slice(self, request: CapacityRequest) -> CapacitySlice | None:
        """acquire_capacity, saying how many units were granted and how many calls wait."""
        ...

    async def release_capacity(self, waiter_id: str, member: str, units: int = 0) -> int:
        """Give back a grant (`units` > 0: only that many of its units, the rest stay held), or
        withdraw a waiter; return how many calls wait now."""
        ...

    async def capacity_waiting(self) -> int:
        """How many calls of any replica wait for capacity now."""
        ...

    async def renew_capacity(self, waiter_ids: Sequence[str], lease_seconds: float) -> list[str]:
        """Extend the leases of these grants; return the ids the ledger no longer holds (their
        lease ran out, or the ledger lost them)."""
        ...

    async def capacity_in_use(self) -> dict[str, str]:
        """What calls hold now on each instance, as `c,m,g` by address."""
        ...
