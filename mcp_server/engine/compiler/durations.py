"""Durations in a workflow definition: positive, and at most a week."""

from __future__ import annotations

from google.protobuf import duration_pb2

from mcp_server.errors import ViolationCollector

MAX_DURATION_SECONDS = 7 * 24 * 3600


def duration(message: object, name: str, path: str, violations: ViolationCollector) -> float | None:
    if not message.HasField(name):  # type: ignore[attr-defined]
        return None
    value: duration_pb2.Duration = getattr(message, name)
    seconds = value.seconds + value.nanos / 1e9
    if seconds <= 0:
        violations.add(path, "must be positive")
        return None
    if seconds > MAX_DURATION_SECONDS:
        violations.add(path, f"must be at most {MAX_DURATION_SECONDS} seconds")
        return None
    return seconds
