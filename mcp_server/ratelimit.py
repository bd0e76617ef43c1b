"""Token buckets: at most `rate` submissions per second per principal, bursts up to twice that."""

from __future__ import annotations

import time
from dataclasses import dataclass

from mcp_server.errors import ResourceExhausted


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Per-key token buckets held in this replica's memory (so the limit is per replica)."""

    def __init__(self, rate: float, burst: float | None = None, max_keys: int = 100_000) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, 2 * rate)
        self.max_keys = max_keys
        self._buckets: dict[str, _Bucket] = {}

    def take(self, key: str) -> None:
        """Spend one token of `key`'s bucket; raise ResourceExhausted when it is empty."""
        if self.rate <= 0:
            return
        now = time.monotonic()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._buckets.clear()  # forgetting buckets only ever lets more through, never less
            bucket = self._buckets[key] = _Bucket(self.burst, now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        if bucket.tokens < 1:
            wait = (1 - bucket.tokens) / self.rate
            raise ResourceExhausted(
                f"more than {self.rate:g} submissions per second; retry in {wait:.2f}s",
                reason="RATE_LIMITED",
                metadata={"retry_after_seconds": f"{wait:.3f}"},
            )
        bucket.tokens -= 1
