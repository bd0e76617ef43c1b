"""The CLI's live tree folds events into the shape of the run."""

from __future__ import annotations

from google.protobuf import timestamp_pb2
from rich.console import Console

from mcp_sdk.proto import task_pb2
from mcp_server.cli import render
from mcp_server.cli.render import step_status
from mcp_server.cli.tree import RunTree

E = task_pb2.TaskEventType


def event(
    seq: int, type_: int, path: str = "", protocol: str = "", attempt: int = 0, message: str = "", ms: int = 0
) -> task_pb2.TaskEvent:
    return task_pb2.TaskEvent(
        sequence=seq,
        type=type_,
        step_path=path,
        protocol=protocol,
        attempt=attempt,
        message=message,
        time=timestamp_pb2.Timestamp(seconds=1000, nanos=ms * 1_000_000),
    )


def test_the_tree_nests_paths_and_shows_retries_timings_and_outcome():
    tree = RunTree("t1")
    for e in [
        event(1, E.TASK_EVENT_TYPE_STEP_STARTED, "root", ms=0),
        event(2, E.TASK_EVENT_TYPE_STEP_STARTED, "root/fetch", "http", ms=1),
        event(3, E.TASK_EVENT_TYPE_STEP_RETRYING, "root/fetch", "http", attempt=1, message="attempt 1 failed", ms=5),
        event(4, E.TASK_EVENT_TYPE_STEP_COMPLETED, "root/fetch", "http", attempt=2, ms=41),
        event(5, E.TASK_EVENT_TYPE_STEP_STARTED, "root/judge#2", "critic", ms=42),
        event(6, E.TASK_EVENT_TYPE_STEP_FAILED, "root/judge#2", "critic", message="boom", ms=50),
        event(7, E.TASK_EVENT_TYPE_FAILED, message="step judge failed", ms=51),
    ]:
        tree.apply(e)
    console = Console(record=True, width=120)
    console.print(tree.render())
    text = console.export_text()
    assert "FAILED: step judge failed" in text
    assert "fetch [http] attempt 2 40 ms" in text
    assert "judge#2 [critic]" in text and "boom" in text
    lines = text.splitlines()
    assert lines.index(next(line for line in lines if "fetch" in line)) > lines.index(
        next(line for line in lines if "root" in line)
    )


def test_a_step_s_status_says_which_fallback_answered_and_when_its_retry_is_due():
    answered = task_pb2.StepState(status=task_pb2.STEP_STATUS_COMPLETED, fallback_protocol="summarize_lite")
    assert step_status(answered) == "COMPLETED (via summarize_lite)"
    waiting = task_pb2.StepState(status=task_pb2.STEP_STATUS_RUNNING, failed_attempts=2)
    waiting.retry_time.FromSeconds(1000 + 3600 + 61)
    assert step_status(waiting) == "RUNNING (retry 3 at 01:17:41Z)"
    assert step_status(task_pb2.StepState(status=task_pb2.STEP_STATUS_COMPLETED, reused=True)) == "COMPLETED (reused)"


def test_a_composite_step_s_row_says_what_the_steps_under_it_used_in_all(monkeypatch):
    wide = Console(width=240, record=True, highlight=False)
    monkeypatch.setattr(render, "console", wide)
    task = task_pb2.Task(task_id="t1", workflow_id="w", status=task_pb2.TASK_STATUS_COMPLETED, usage={"cost": 0.75})
    task.steps.add(path="root", kind="sequence")
    task.steps.add(path="root/a", kind="step", protocol="chat", usage={"cost": 0.25})
    task.steps.add(path="root/b", kind="step", protocol="chat", usage={"cost": 0.5})
    render.task_summary(task)
    rows = {line.split()[1]: line for line in wide.export_text().splitlines() if line.startswith("│ root")}
    assert "in all: cost 0.75" in rows["root"]
    assert "cost 0.25" in rows["root/a"] and "in all" not in rows["root/a"]


def test_a_task_that_cleans_up_after_a_cancel_says_so_in_its_tree_and_its_summary(monkeypatch):
    tree = RunTree("t1")
    for e in [
        event(1, E.TASK_EVENT_TYPE_STEP_STARTED, "r", ms=0),
        event(2, E.TASK_EVENT_TYPE_STEP_STARTED, "r/charge", "payments", ms=1),
        event(3, E.TASK_EVENT_TYPE_CLEANING_UP, message="cancelled (stop): running the clean-up", ms=5),
        event(4, E.TASK_EVENT_TYPE_STEP_STARTED, "r/refund", "payments", ms=6),
    ]:
        tree.apply(e)
    console = Console(record=True, width=120)
    console.print(tree.render())
    text = console.export_text()
    assert "cleaning up: cancelled (stop)" in text
    assert tree.lines["r/charge"].status == "cancelled" and tree.lines["r/refund"].status == "running"

    wide = Console(width=200, record=True, highlight=False)
    monkeypatch.setattr(render, "console", wide)
    task = task_pb2.Task(task_id="t1", workflow_id="w", status=task_pb2.TASK_STATUS_RUNNING)
    task.cancel_request.reason = "the customer [cancelled]"
    task.cancel_request.time.FromSeconds(86400)
    render.task_summary(task)
    assert "cancelled at 1970-01-02 00:00:00 UTC (the customer [cancelled]): cleaning up, then it ends CANCELLED" in (
        wide.export_text()
    )
