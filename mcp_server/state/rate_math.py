"""The arithmetic of a rate limit, for a store that keeps its state in Python (SQLite); the Redis
store does the same in Lua (redis/ratelimits_lua.py). See engine/ports/ratelimits.py for what
a limit grants: room in the window of the last period, and under a GCRA (emission interval
period / limit, tolerance limit + burst units)."""

from __future__ import annotations

from collections.abc import Sequence

from mcp_server.engine.ports import RateLimitSpec

EPSILON = 1e-9


def wait_for(spec: RateLimitSpec, tat: float, grants: Sequence[tuple[float, float]], now: float, units: float) -> float:
    """Seconds until `units` may be granted (0: now). `grants` are the (time, units) of the last
    period, oldest first; `tat` the GCRA's theoretical arrival time."""
    capacity = spec.capacity
    used = sum(u for _, u in grants)
    window = 0.0
    if used + units > capacity + EPSILON:
        needed, freed = used + units - capacity, 0.0
        for at, granted in grants:
            freed += granted
            if freed >= needed - EPSILON:
                window = at + spec.period - now
                break
    interval = spec.period / spec.limit
    allowed_at = max(tat, now) + (units - capacity) * interval
    return max(window, allowed_at - now, 0.0)


def next_tat(spec: RateLimitSpec, tat: float, now: float, units: float) -> float:
    """The GCRA's theoretical arrival time after granting `units` now."""
    return max(tat, now) + units * spec.period / spec.limit


def available(spec: RateLimitSpec, tat: float, grants: Sequence[tuple[float, float]], now: float) -> float:
    """The units one call could take now."""
    interval = spec.period / spec.limit
    by_gcra = spec.capacity - (max(tat, now) - now) / interval
    by_window = spec.capacity - sum(u for _, u in grants)
    return max(0.0, min(by_gcra, by_window))
