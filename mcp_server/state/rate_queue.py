"""The line of calls waiting for a key's units, for a store that keeps it in Python (SQLite, one
process); the Redis store keeps the same in Lua (redis/ratelimits_lua.py). See take_units in
engine/ports/ratelimits.py: by priority, then first come, first served, each waiter dropped once
it misses its turn by WAITER_GRACE_SECONDS. An ask costs O(log n) in the line's length (and a
memmove of it on joining or leaving), as on Redis: a map of thousands of items waiting on one key
asks once each, not once per waiter ahead."""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
from dataclasses import dataclass, field

from mcp_server.engine.ports import WAITER_GRACE_SECONDS

LINE_READ = 256  # the units of this many ahead are read; those further back count at the asker's
Order = tuple[int, float, float]  # (-priority, first ask, arrival): the line's order


@dataclass
class _Place:
    units: float
    stale_at: float  # its turn plus the grace: dropped after that
    order: Order


@dataclass
class _Line:
    places: dict[str, _Place] = field(default_factory=dict)
    ordered: list[tuple[Order, str]] = field(default_factory=list)  # sorted
    expiries: list[tuple[float, str]] = field(default_factory=list)  # a heap; an entry a later ask replaced is skipped

    def remove(self, waiter: str) -> None:
        place = self.places.pop(waiter)
        del self.ordered[bisect.bisect_left(self.ordered, (place.order, waiter))]

    def drop_stale(self, now: float) -> None:
        while self.expiries and self.expiries[0][0] < now:
            stale_at, waiter = heapq.heappop(self.expiries)
            place = self.places.get(waiter)
            if place is not None and place.stale_at == stale_at:
                self.remove(waiter)


class WaiterLines:
    """Per key, the waiters in line: higher priority first, then in the order they first asked."""

    def __init__(self) -> None:
        self._lines: dict[str, _Line] = {}
        self._arrivals = itertools.count()

    def ahead(self, key: str, waiter: str, units: float, priority: int, now: float) -> float:
        """The units the live waiters ahead of `waiter` wait for (when it is not in line, of those
        it would stand behind; past the first LINE_READ, each counted at `units`); drops those that
        missed their turn."""
        line = self._lines.get(key)
        if line is None:
            return 0.0
        line.drop_stale(now)
        if not line.places:
            del self._lines[key]
            return 0.0
        mine = line.places.get(waiter)
        # a newcomer stands behind those of its priority that asked first, in the same instant too
        where = (mine.order, waiter) if mine is not None else ((-priority, now, math.inf), "")
        count = bisect.bisect_left(line.ordered, where)
        read = line.ordered[: min(count, LINE_READ)]
        return sum(line.places[name].units for _, name in read) + max(count - LINE_READ, 0) * units

    def waiting(self, key: str, now: float) -> int:
        """How many are in `key`'s line and not past their grace."""
        line = self._lines.get(key)
        return 0 if line is None else sum(1 for place in line.places.values() if place.stale_at >= now)

    def wait(self, key: str, waiter: str, units: float, priority: int, now: float, turn: float) -> None:
        """`waiter` waits for `units` of `key` until `turn` (Unix seconds), keeping its place if it
        has one (else taking it now, at `priority`)."""
        line = self._lines.setdefault(key, _Line())
        stale_at = turn + WAITER_GRACE_SECONDS
        place = line.places.get(waiter)
        if place is None:
            place = line.places[waiter] = _Place(units, stale_at, (-priority, now, next(self._arrivals)))
            bisect.insort(line.ordered, (place.order, waiter))
        else:
            place.units, place.stale_at = units, stale_at
        heapq.heappush(line.expiries, (stale_at, waiter))

    def waiters_under(self, limit_key: str, most: int) -> list[str]:
        """The waiters in the line of `limit_key`, or of every key under it when it is a
        template (`tenant:*`), at most `most`."""
        if limit_key.endswith("*"):
            prefix = limit_key[:-1]
            keys = [key for key in self._lines if key.startswith(prefix)]
        else:
            keys = [limit_key] if limit_key in self._lines else []
        found = [waiter for key in keys for _, waiter in self._lines[key].ordered]
        return found[:most]

    def leave(self, key: str, waiter: str) -> None:
        line = self._lines.get(key)
        if line is not None and waiter in line.places:
            line.remove(waiter)
            if not line.places:
                del self._lines[key]
