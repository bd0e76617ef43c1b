"""What a step's end event carries beside its duration and kind: how late a timer fired, what
its calls used, how its cache fared (read by watchers, and by the metrics)."""

from __future__ import annotations

from typing import Any

from google.rpc import code_pb2

from mcp_sdk.proto import task_pb2


def duration_ms(started_ns: int, state: task_pb2.StepState, ended_ns: int) -> float:
    """How long the step ran, from when this life of the run began it (`started_ns`), else from
    the start an earlier life recorded (slower to read: only after a restore)."""
    return round((ended_ns - (started_ns or state.start_time.ToNanoseconds())) / 1e6, 3)


def end_data(state: task_pb2.StepState, ended_ns: int, cache: tuple[str, int] | None) -> dict[str, Any]:
    """The extra data of the end event of the step in `state` (empty for most steps)."""
    return {**_timer(state, ended_ns), **_usage(state), **_cached(cache)}


def _timer(state: task_pb2.StepState, ended_ns: int) -> dict[str, float]:
    """For a wait or sleep that its deadline ended: how late it fired (ms), for the event's data."""
    if state.kind not in ("sleep", "wait") or not state.wait.HasField("deadline"):
        return {}
    if state.kind == "wait" and not state.wait.timed_out:
        return {}
    return {"timer_late_ms": round((ended_ns - state.wait.deadline.ToNanoseconds()) / 1e6, 3)}


def _cached(outcome: tuple[str, int] | None) -> dict[str, Any]:
    """For a step with a cache: whether it was a hit or a miss, and the output's size."""
    return {"cache": outcome[0], "cache_bytes": outcome[1]} if outcome else {}


def _usage(state: task_pb2.StepState) -> dict[str, dict[str, float]]:
    """What the step's calls used, for the event's data (and the metrics that read it)."""
    return {"usage": dict(state.usage)} if state.usage else {}


def code_number(code: str) -> int:
    """The google.rpc.Code number of a status code name; UNKNOWN for a name that is not one."""
    try:
        return int(code_pb2.Code.Value(code))
    except ValueError:
        return int(code_pb2.UNKNOWN)


def code_name(number: int) -> str:
    """The status code name of a google.rpc.Code number; UNKNOWN for a number that is not one."""
    try:
        return str(code_pb2.Code.Name(number))
    except ValueError:
        return "UNKNOWN"
