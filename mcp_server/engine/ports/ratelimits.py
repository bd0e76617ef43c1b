"""The rate-limit port: limits per key, shared by every replica through the store, and the
units calls take of them (see ProtocolRegistry.PutRateLimit in registry.proto, docs/ratelimits.md).

Each key's limit grants units so that over any window of one `period` at most `limit + burst`
are granted, and no more than `limit` per period in the long run: a grant needs room both in the
window (a log of the grants of the last period) and under a GCRA whose tolerance lets
`limit + burst` go at once. Both checks and the grant are one atomic step in the store, for
every key a call asks at once (all or nothing), so concurrent calls on any replica never
overshoot.

A limit whose key ends in `*` (`tenant:*`) is a template: every key that starts with what comes
before the `*` and has no limit of its own is limited like it, each key on its own (`tenant:acme`
and `tenant:zeta` each get the template's limit). Such a key's state is the store's to forget
once it could no longer hold anything back (no grant within its last period, its GCRA caught up),
so keys made from a tenant or user id leave nothing behind.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

# how long after its turn a waiting call keeps its place in a key's line (see take_units)
WAITER_GRACE_SECONDS = 5.0
MAX_WOKEN = 10_000  # parked tasks a change of a limit makes due at once (the rest ask at their turn)


def waiter_task(waiter: str) -> str:
    """The task of a waiter's name (see waiter_name)."""
    return waiter.split("/", 1)[0]


def waiter_name(task_id: str, path: str) -> str:
    """The name a step's calls wait in line under, the same in every life of the run (a step
    asks for one call at a time: its attempts and fallbacks follow one another)."""
    return f"{task_id}/{path}"


@dataclass(frozen=True)
class RateLimitSpec:
    key: str
    limit: float
    period: float  # seconds
    burst: float = 0.0

    @property
    def capacity(self) -> float:
        """The most units one window of one period may hold."""
        return self.limit + self.burst


@dataclass(frozen=True)
class Grant:
    """The answer to an ask: granted, or when to ask again (`retry_after` seconds) and which key
    said no; `too_large` when the key could never grant that many units at once."""

    granted: bool
    retry_after: float = 0.0
    key: str = ""
    too_large: bool = False


@dataclass(frozen=True)
class KeyRoom:
    """One key's room under the limit that applies to it (`spec`: the key's own, or its template's)."""

    spec: RateLimitSpec
    available: float  # the units one call could take now
    next_unit: float | None  # seconds until one unit could be taken (0: now); None: never (limit + burst < 1)
    waiting: int = 0  # calls in `key`'s line now (see RateLimitStore.take_units)


class RateLimitStore(Protocol):
    async def put_rate_limit(self, spec: RateLimitSpec) -> None:
        """Set or replace the limit of `spec.key` (what was granted within the last period counts on)."""
        ...

    async def delete_rate_limit(self, key: str) -> bool:
        """Remove the limit of `key` (its calls go unlimited); whether it had one."""
        ...

    async def list_rate_limits(self) -> list[tuple[RateLimitSpec, float]]:
        """Every limit, by key, with the units a call could take of it now."""
        ...

    async def rate_limit_keys(self) -> frozenset[str]:
        """The key of every limit (templates too): what the engine needs to know which calls take
        units, read without the room of each (which costs a read of every key's grants)."""
        ...

    async def read_rate_limit(self, key: str, limit_key: str) -> KeyRoom | None:
        """The limit of `limit_key` (the key itself, or the template it falls under) and `key`'s
        room under it now; None when `limit_key` has no limit. Changes nothing."""
        ...

    async def take_units(self, asks: Sequence[tuple[str, float, str]], waiter: str = "", priority: int = 0) -> Grant:
        """Grant every (key, units, limit key) ask at once, or none of them: `key`'s units under
        the limit of `limit key` (the key itself, or the template it falls under). A limit key
        with no limit grants anything. A refusal names the ask's `key`.

        `waiter` (a call's stable name, the same each time it asks) puts a refused call in line:
        each key keeps the calls it refused by `priority` (higher first, as the queue serves
        tasks), then in the order they first asked; a grant leaves room for the units of those
        ahead of the asker, and a refusal says when the asker's turn comes (after theirs), so
        the calls waiting for a key are served first come, first served within a priority,
        each asking about once. A call whose step ends meanwhile leaves through leave_lines; one
        that misses its turn by WAITER_GRACE_SECONDS (its replica killed and nobody resumed it
        in time) is dropped, and asks at the line's end when it comes back. Without `waiter` an
        ask neither waits in line nor leaves room for it."""
        ...

    async def leave_lines(self, keys: Sequence[str], waiter: str) -> None:
        """Take `waiter` out of each key's line: it waits no more (cancelled, timed out, its
        branch failed), so those behind it, and those who come after, do not wait for it."""
        ...

    async def waiting_tasks(self, limit_key: str, at_most: int = MAX_WOKEN) -> list[str]:
        """The tasks whose calls wait in the line of `limit_key` (a template's: of every key under
        it, where the store can find them), each once, at most `at_most`, the front of a line first."""
        ...

    async def announce_change(self, limit_key: str) -> None:
        """Tell every replica that the limit of `limit_key` changed (put or deleted), or that a
        call left a line of it: their calls waiting for it ask again."""
        ...

    def limit_changes(self) -> AsyncIterator[str]:
        """The limit keys other replicas announce changed, as they come, for as long as it is
        iterated (it may miss some: a dropped connection). A store no other process shares ends it
        at once."""
        ...


class UnitGate(Protocol):
    """What a run asks rate-limit units of (protocols/rate_limits.py): the store, behind a cache
    of which keys have a limit at all, so an unlimited call costs no round trip."""

    def limit_key(self, key: str) -> str | None:
        """The key whose limit applies to `key`: its own, a template's (`tenant:*`), or None."""
        ...

    async def take_units(self, asks: Sequence[tuple[str, float]], waiter: str = "", priority: int = 0) -> Grant: ...

    def waiting(self, key: str, wake: Callable[[], None]) -> AbstractContextManager[None]:
        """A step of this replica waits for units of `key` while in the context; `wake` ends its
        wait early (the limit changed: it asks again)."""
        ...

    def give_up(self, keys: Sequence[str], waiter: str) -> None:
        """The call named `waiter` waits no more for `keys`: out of their lines, in the background
        (should the store be away, its places age out as if it had gone)."""
        ...
