"""Resources: what a call needs, what an instance offers, and who gets what first.

A plugin instance offers a Capacity (cpu_millis, memory_mb, gpus; 0 means unlimited) shared
by every call it runs. A protocol's manifest says what one call needs. A call may start on an
instance only if what the instance has left covers the call's needs.

`grant_in_order` is the rule both ledgers (in memory for the embedded store, a Lua script on
Redis) apply whenever a call asks: waiting calls are considered in task-priority order, FIFO
within a priority, and each is granted the least-loaded of its instances that fits. A call
that fits nowhere now blocks the instances it could use for everyone behind it, so a call that
needs much is never starved by a stream of calls that need little.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mcp_sdk.proto import protocol_pb2

RESOURCES = ("cpu_millis", "memory_mb", "gpus")
UNLIMITED = -1


@dataclass(frozen=True)
class Resources:
    """An amount of each resource: a call's needs, an instance's capacity or what is in use."""

    cpu_millis: int = 0
    memory_mb: int = 0
    gpus: int = 0

    @classmethod
    def needs_of(cls, requirements: protocol_pb2.ResourceRequirements) -> Resources:
        gpus = requirements.gpus or (1 if requirements.gpu else 0)
        return cls(requirements.cpu_millis, requirements.memory_mb, gpus)

    @classmethod
    def of_capacity(cls, capacity: protocol_pb2.Capacity) -> Resources:
        return cls(capacity.cpu_millis, capacity.memory_mb, capacity.gpus)

    def as_capacity(self) -> protocol_pb2.Capacity:
        return protocol_pb2.Capacity(cpu_millis=self.cpu_millis, memory_mb=self.memory_mb, gpus=self.gpus)

    @property
    def amounts(self) -> tuple[int, int, int]:
        return (self.cpu_millis, self.memory_mb, self.gpus)

    def __bool__(self) -> bool:
        return any(self.amounts)

    def plus(self, other: Resources) -> Resources:
        return Resources(*(a + b for a, b in zip(self.amounts, other.amounts)))

    def minus(self, other: Resources) -> Resources:
        return Resources(*(a - b for a, b in zip(self.amounts, other.amounts)))

    def times(self, units: int) -> Resources:
        return Resources(*(a * units for a in self.amounts))

    def describe(self) -> str:
        shown = [f"{amount} {name.replace('_', ' ')}" for name, amount in zip(RESOURCES, self.amounts) if amount]
        return ", ".join(shown) or "nothing"

    def encode(self) -> str:
        return ",".join(str(a) for a in self.amounts)

    @classmethod
    def decode(cls, text: str) -> Resources:
        return cls(*(int(a) for a in text.split(",")))


def limits(capacity: Resources, needs: Resources) -> bool:
    """Whether `capacity` bounds any resource `needs` asks for (else admission is not needed)."""
    return any(need and cap for need, cap in zip(needs.amounts, capacity.amounts))


def short_by(capacity: Resources, in_use: Resources, needs: Resources) -> list[str]:
    """The resources of which an instance has too little left for `needs` (empty: it fits)."""
    return [
        name
        for name, cap, used, need in zip(RESOURCES, capacity.amounts, in_use.amounts, needs.amounts)
        if need and cap and used + need > cap
    ]


def never_fits(capacity: Resources, needs: Resources) -> list[str]:
    """The resources of which an instance has too little even when idle."""
    return short_by(capacity, Resources(), needs)


def headroom(capacity: Resources, in_use: Resources) -> float:
    """How much an instance has left, as the smallest free share of its limited resources
    (1.0 for an instance with no limits): the least loaded has the most."""
    shares = [(cap - used) / cap for cap, used in zip(capacity.amounts, in_use.amounts) if cap]
    return min(shares, default=1.0)


def units_that_fit(capacity: Resources, in_use: Resources, needs: Resources, wanted: int) -> int:
    """How many units of `needs` (up to `wanted`, at least one) an instance has room for."""
    units = wanted
    for cap, used, need in zip(capacity.amounts, in_use.amounts, needs.amounts):
        if cap and need:
            units = min(units, (cap - used) // need)
    return max(units, 1)


@dataclass(frozen=True)
class Waiter:
    """A call waiting for capacity: its id, its needs, the instances that may serve it, and how
    many units of its needs it would take (a slice)."""

    waiter_id: str
    needs: Resources
    candidates: tuple[str, ...]
    units: int = 1


def grant_in_order(
    waiters: Sequence[Waiter], capacities: Mapping[str, Resources], in_use: Mapping[str, Resources]
) -> dict[str, tuple[str, int]]:
    """Which of `waiters` (best first) get capacity now: the instance and the units of each."""
    use = dict(in_use)
    blocked: set[str] = set()
    granted: dict[str, tuple[str, int]] = {}
    for waiter in waiters:
        if len(blocked) >= len(capacities) and blocked >= capacities.keys():
            break  # every instance is blocked: no one behind can be granted
        open_ = [a for a in waiter.candidates if a in capacities and a not in blocked]
        fitting = [a for a in open_ if not short_by(capacities[a], use.get(a, Resources()), waiter.needs)]
        if not fitting:
            blocked.update(waiter.candidates)
            continue
        best = max(fitting, key=lambda a: headroom(capacities[a], use.get(a, Resources())))
        units = units_that_fit(capacities[best], use.get(best, Resources()), waiter.needs, waiter.units)
        use[best] = use.get(best, Resources()).plus(waiter.needs.times(units))
        granted[waiter.waiter_id] = (best, units)
    return granted


def least_loaded(addresses: Sequence[str], calls: Mapping[str, int], turn: int = 0) -> str:
    """For instances without limits: the one with the fewest calls in flight from here; among
    equals, the next in turn (so idle instances share the calls)."""
    fewest = min(calls.get(a, 0) for a in addresses)
    tied = [a for a in addresses if calls.get(a, 0) == fewest]
    return tied[turn % len(tied)]
