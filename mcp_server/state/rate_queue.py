"""The line of calls waiting for a key's units, for a store that keeps it in Python (SQLite, one
process); the Redis store keeps the same in Lua (redis/ratelimits_lua.py). See take_units in
engine/ports/ratelimits.py: by priority, then first come, first served, each waiter dropped once
it misses its turn by WAITER_GRACE_SECONDS."""

from __future__ import annotations

from dataclasses import dataclass

from mcp_server.engine.ports import WAITER_GRACE_SECONDS


@dataclass
class _Place:
    units: float
    stale_at: float  # its turn plus the grace: dropped after that
    order: tuple[int, float]  # (-priority, first ask): the line's order


class WaiterLines:
    """Per key, the waiters in line: higher priority first, then in the order they first asked."""

    def __init__(self) -> None:
        self._lines: dict[str, dict[str, _Place]] = {}

    def ahead(self, key: str, waiter: str, priority: int, now: float) -> float:
        """The units the live waiters ahead of `waiter` wait for (when it is not in line, of those
        it would stand behind); drops those that missed their turn."""
        line = self._lines.get(key)
        if not line:
            return 0.0
        for gone in [name for name, place in line.items() if place.stale_at < now]:
            del line[gone]
        if not line:
            del self._lines[key]
            return 0.0
        mine = line.get(waiter)
        # a newcomer stands behind those of its priority that asked first, in the same instant too
        before = (mine.order, False) if mine is not None else ((-priority, now), True)
        return sum(
            place.units
            for name, place in line.items()
            if name != waiter and (place.order < before[0] or (before[1] and place.order == before[0]))
        )

    def waiting(self, key: str, now: float) -> int:
        """How many are in `key`'s line and not past their grace."""
        return sum(1 for place in self._lines.get(key, {}).values() if place.stale_at >= now)

    def wait(self, key: str, waiter: str, units: float, priority: int, now: float, turn: float) -> None:
        """`waiter` waits for `units` of `key` until `turn` (Unix seconds), keeping its place if it
        has one (else taking it now, at `priority`)."""
        line = self._lines.setdefault(key, {})
        place = line.get(waiter)
        if place is None:
            line[waiter] = _Place(units, turn + WAITER_GRACE_SECONDS, (-priority, now))
        else:
            place.units, place.stale_at = units, turn + WAITER_GRACE_SECONDS

    def leave(self, key: str, waiter: str) -> None:
        line = self._lines.get(key)
        if line is not None and line.pop(waiter, None) is not None and not line:
            del self._lines[key]
