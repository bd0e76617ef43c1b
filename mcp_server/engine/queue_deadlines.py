"""Queue deadlines (SubmitTaskRequest.queue_timeout): a task that has not started by its
`queue_deadline` ends CANCELLED, its error message starting `QUEUE_TIMEOUT:`, and never runs.

Two places end such a task: the due-time sweep every replica runs (a queued task's deadline is its
due time; see WaitStore.release_due), which cancels it in the queue, and the start of a run that
takes it after its deadline, sooner than the sweep came to it."""

from __future__ import annotations

from google.protobuf import timestamp_pb2

from mcp_sdk.proto import task_pb2
from mcp_server.engine.instants import rfc3339_of

QUEUE_TIMEOUT = "QUEUE_TIMEOUT"


def expired_unstarted(task: task_pb2.Task, lease_token: int, now_ns: int) -> str:
    """Why a task taken with `lease_token` ends without starting: its queue deadline passed before
    any run began it ("" when it may start). A task taken over from another replica (a later
    lease) may have begun a call there: it runs on."""
    if not task.HasField("queue_deadline") or task.HasField("start_time") or lease_token > 1:
        return ""
    deadline = task.queue_deadline.ToNanoseconds()
    return expiry_reason(task.queue_deadline) if now_ns >= deadline else ""


def expiry_reason(deadline: timestamp_pb2.Timestamp) -> str:
    return f"{QUEUE_TIMEOUT}: not started by its queue deadline, {rfc3339_of(deadline.ToNanoseconds() / 1e9)}"


# the message of a task the due-time sweep ends (it reads no header: the deadline is not named)
SWEPT = f"{QUEUE_TIMEOUT}: not started by its queue deadline"
