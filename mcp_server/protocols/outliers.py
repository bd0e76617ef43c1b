"""Outlier ejection, as service meshes do it: an instance that fails several calls in a row is
left out for a while, longer each time, and calls go to the protocol's other instances. An
instance that just failed is tried last by the next call, so a retry goes elsewhere at once.
Never every instance of a protocol is left out: with all of them ejected, all are tried.

Each replica judges for itself (the judgement is about the path from this replica)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class OutlierSettings:
    """`consecutive_failures` failed calls in a row eject an instance for `ejection_seconds`
    times the number of its ejections so far (at most `max_ejection_seconds`); an instance
    that failed within `recent_failure_seconds` is tried after the others."""

    consecutive_failures: int = 3
    ejection_seconds: float = 10.0
    max_ejection_seconds: float = 120.0
    recent_failure_seconds: float = 2.0


@dataclass
class _Record:
    consecutive: int = 0
    ejections: int = 0
    until: float = 0.0
    last_failure: float = 0.0
    paused: float = 0.0  # no call before this (monotonic): the instance asked (RetryInfo)


class Outliers:
    """The failure records of every instance this replica called, by address."""

    def __init__(self, settings: OutlierSettings | None = None) -> None:
        self.settings = settings or OutlierSettings()
        self._records: dict[str, _Record] = {}

    def failed(self, address: str) -> None:
        record = self._records.setdefault(address, _Record())
        now = time.monotonic()
        record.consecutive += 1
        record.last_failure = now
        if record.consecutive >= self.settings.consecutive_failures:
            record.ejections += 1
            record.until = now + min(
                self.settings.ejection_seconds * record.ejections, self.settings.max_ejection_seconds
            )
            record.consecutive = 0

    def pause(self, address: str, seconds: float) -> None:
        """The instance asked for no call for `seconds` (a RetryInfo): it gets none until then."""
        record = self._records.setdefault(address, _Record())
        record.paused = max(record.paused, time.monotonic() + seconds)

    def paused_until(self, addresses: Sequence[str]) -> float | None:
        """Seconds until the first of `addresses` takes calls again, when every one is paused; else None."""
        now = time.monotonic()
        ends = [record.paused for a in addresses if (record := self._records.get(a)) is not None]
        if len(ends) < len(addresses) or not ends or min(ends) <= now:
            return None
        return min(ends) - now

    def succeeded(self, address: str) -> None:
        record = self._records.get(address)
        if record is not None:
            record.consecutive = 0
            if record.until < time.monotonic():
                record.ejections = 0

    def ejected_until(self, address: str) -> float:
        """Wall-clock time (seconds) until which the instance is left out, or 0."""
        record = self._records.get(address)
        if record is None or record.until <= time.monotonic():
            return 0.0
        return time.time() + (record.until - time.monotonic())

    def serving(self, addresses: Sequence[str]) -> list[str]:
        """The instances that are not ejected (possibly none)."""
        now = time.monotonic()
        return [a for a in addresses if (record := self._records.get(a)) is None or record.until <= now]

    def usable(self, addresses: Sequence[str]) -> list[str]:
        """The instances to try, best first: not ejected and not failed just now come first;
        if every one is ejected, all of them (a mesh never ejects a whole cluster)."""
        if not any(a in self._records for a in addresses):  # none ever failed or paused
            return list(addresses)
        now = time.monotonic()
        records = {a: self._records.get(a, _Record()) for a in addresses}
        addresses = [a for a in addresses if records[a].paused <= now] or list(addresses)
        serving = [a for a in addresses if records[a].until <= now] or list(addresses)
        fresh = [a for a in serving if now - records[a].last_failure > self.settings.recent_failure_seconds]
        return fresh or serving
