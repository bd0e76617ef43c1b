"""Instants the engine shows or keeps (a sleep's `until`, a rate limit's next units) held to
what a protobuf Timestamp and a datetime can represent: the years 1 to 9999."""

from __future__ import annotations

import datetime as dt

# the last second a Timestamp (and a datetime) can hold: 9999-12-31T23:59:59Z
LATEST_SECONDS = 253_402_300_799


def rfc3339_of(seconds: float) -> str:
    """Unix seconds as RFC 3339 UTC to the millisecond; a time past the year 9999 (a rate limit's
    next units, say) as its last second, one before 1970 as the epoch."""
    moment = dt.datetime.fromtimestamp(min(max(seconds, 0.0), LATEST_SECONDS), dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
