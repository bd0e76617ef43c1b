"""A run's waits and signals (engine/suspensions.py) across lives of the run: what a wait an
earlier life left waiting writes when this life finds its signal."""

from __future__ import annotations

from mcp_sdk.proto import task_pb2
from mcp_server.engine.ports import SignalRecord, WaitRecord
from mcp_server.engine.suspensions import Suspensions


def resumed_at(path: str, signal: str) -> Suspensions:
    """The suspensions of a life that restored a wait at `path` an earlier life left waiting."""
    suspensions = Suspensions(park_horizon=1.0)
    suspensions.dormant[path] = WaitRecord(signal, 0, since_ms=1_000)
    return suspensions


def record(index: int, signal: str) -> SignalRecord:
    return SignalRecord(index, task_pb2.SignalTaskRequest(signal=signal))


def test_a_signal_taken_in_for_a_restored_wait_marks_its_record_as_having_one_coming() -> None:
    suspensions = resumed_at("root/a", "go")
    taken = suspensions.take_in(record(1, "go"), sequence=7)
    assert taken.assigned == "root/a"
    assert suspensions.take_changes()[1] == {"root/a": WaitRecord("go", 0, 1_000, assigned=7)}
    # a second signal of that name is kept, not sent to the wait that has one coming
    assert suspensions.take_in(record(2, "go"), sequence=8).assigned == ""


def test_a_restored_wait_that_finds_its_signal_ends_and_its_record_goes() -> None:
    suspensions = resumed_at("root/a", "go")
    suspensions.take_in(record(1, "go"), sequence=7)
    signal = suspensions.signal_for("root/a", "go")
    assert signal is not None and signal.index == 1
    suspensions.ended("root/a", signal)
    assert suspensions.take_changes()[1] == {"root/a": None}
    assert not suspensions.dormant and signal.consumed
