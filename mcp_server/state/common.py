"""Pieces both store backends share: paging tokens, status sets, the task's two parts."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Mapping

from google.rpc import code_pb2

from mcp_sdk.proto import task_pb2
from mcp_server.engine.events import now
from mcp_server.engine.ports import NO_SHARE, Kept, OwnerShare, QueueGroup
from mcp_server.errors import AlreadyExists, FieldViolation, InvalidArgument, ResourceExhausted

ACTIVE = (task_pb2.TASK_STATUS_PENDING, task_pb2.TASK_STATUS_RUNNING)
TERMINAL = (task_pb2.TASK_STATUS_COMPLETED, task_pb2.TASK_STATUS_FAILED, task_pb2.TASK_STATUS_CANCELLED)
# events read from a task's log at once, and their bytes (past them the page ends after the event
# that passed; events may be 1 MB, so 1,000 of them would have been 1 GB in one read); a watcher
# that starts behind reads on page by page
EVENTS_PAGE = 1000
EVENTS_PAGE_BYTES = 4 * 1024 * 1024
# The queue limit is checked against a count at most this old, plus what this process queued since:
# counting walks the queue's index (on SQLite 2.8 ms per submission with 100,000 queued, the
# default limit). Under a burst the queue can pass its limit by what other replicas queue meanwhile.
QUEUE_LENGTH_CACHE_SECONDS = 0.1
# owners whose queued tasks a store remembers having counted (past it, it forgets them all)
MAX_OWNERS_COUNTED = 10_000


def page_is_full(events: list[task_pb2.TaskEvent]) -> bool:
    """Whether a page of events read from a log may have more after it (see EVENTS_PAGE)."""
    return len(events) >= EVENTS_PAGE or sum(event.ByteSize() for event in events) >= EVENTS_PAGE_BYTES


def encode_token(value: str) -> str:
    return base64.urlsafe_b64encode(value.encode()).decode().rstrip("=")


def decode_token(token: str, field: str = "page_token") -> str:
    if not token:
        return ""
    try:
        return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgument(
            f"{field} is not a token this server issued",
            violations=[FieldViolation(field, "pass next_page_token from the previous page, unchanged")],
        ) from None


def decode_position(token: str) -> int | None:
    """A list position token (a creation counter); None for the first page."""
    text = decode_token(token)
    if not text:
        return None
    if not text.isdigit():
        raise InvalidArgument(
            "page_token is not a token this server issued",
            violations=[FieldViolation("page_token", "pass next_page_token from the previous page, unchanged")],
        )
    return int(text)


def now_seconds() -> float:
    return time.time()


LAYOUT_VERSION = 2
LAYOUT_MISMATCH = (
    "was written by another build (state layout {found}); this build reads layout {wanted} only and has no "
    "upgrade path: drain the old deployment, then start on an empty store (docs/operations.md)"
)


def fixed_part(task: task_pb2.Task) -> bytes:
    """What never changes after SubmitTask: everything but the live fields (see live_part)."""
    fixed = task_pb2.Task()
    fixed.CopyFrom(task)
    for name in (
        "status",
        "result",
        "result_ref",
        "error",
        "start_time",
        "end_time",
        "steps",
        "step_count",
        "usage",
        "last_sequence",
    ):
        fixed.ClearField(name)
    return fixed.SerializeToString()


def live_part(task: task_pb2.Task) -> bytes:
    """The header fields that change while a task runs (the engine writes them, see RunContext)."""
    live = task_pb2.Task(status=task.status, last_sequence=task.last_sequence, step_count=task.step_count)
    for name in ("start_time", "end_time", "error", "result", "result_ref", "cancel_request"):
        if task.HasField(name):
            getattr(live, name).CopyFrom(getattr(task, name))
    return live.SerializeToString()


def assemble(fixed: bytes, live: bytes) -> task_pb2.Task:
    """The task (without step states) from its two stored parts: protobuf merges concatenated
    messages, and the live part comes last, so its fields win."""
    return task_pb2.Task.FromString(fixed + live)


def mark_cancelled(task: task_pb2.Task, event: task_pb2.TaskEvent) -> task_pb2.TaskEvent:
    """Turn a pending task into a cancelled one; returns the event numbered after its last."""
    task.status = task_pb2.TASK_STATUS_CANCELLED
    task.end_time.CopyFrom(now())
    task.error.code = code_pb2.CANCELLED
    task.error.message = event.message
    task.last_sequence += 1
    numbered = task_pb2.TaskEvent()
    numbered.CopyFrom(event)
    numbered.sequence = task.last_sequence
    return numbered


class QueueFull(ResourceExhausted):
    """The queue holds its maximum number of tasks; raised by create_task."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the queue holds {limit} tasks, its limit; retry later", reason="QUEUE_FULL")


class OwnerQueueFull(ResourceExhausted):
    """The submitting owner holds its share of the queue; raised by create_task."""

    def __init__(self, owner: str, limit: int) -> None:
        super().__init__(
            f"{owner or 'this owner'} has {limit} tasks queued, the most one owner may have"
            " (MCP_LIMIT_MAX_QUEUED_PER_OWNER); retry when some have started",
            reason="OWNER_QUEUE_FULL",
            metadata={"share": "tasks", "limit": str(limit)},
        )


class OwnerBytesFull(OwnerQueueFull):
    """The owner's queued tasks and this one would store more than its share of bytes."""

    def __init__(self, owner: str, queued: int, size: int, limit: int) -> None:
        ResourceExhausted.__init__(
            self,
            f"{owner or 'this owner'} has {queued} bytes of tasks queued; this task's {size} more would pass"
            f" {limit}, the most one owner may have (MCP_LIMIT_MAX_QUEUED_BYTES_PER_OWNER); retry when some"
            " have started",
            reason="OWNER_QUEUE_FULL",
            metadata={"share": "bytes", "limit": str(limit)},
        )


def owner_to_count(share: OwnerShare, length: int, size: int) -> bool:
    """Whether the owner's queued tasks must be read to judge a task of `size` bytes against its
    share, with `length` tasks queued in all: for the count, only once the whole queue holds that
    many (until then no owner can); for bytes, once anything is queued or the task alone is more."""
    return bool((share.tasks and length >= share.tasks) or (share.bytes and (length or size > share.bytes)))


def check_owner_share(owner: str, share: OwnerShare, count: int, held: int, size: int) -> None:
    """Raise OwnerQueueFull if `owner`, with `count` tasks of `held` bytes queued, may not queue one
    more of `size` bytes: at most `share.tasks` tasks and `share.bytes` bytes (0: no limit)."""
    if share.tasks and count >= share.tasks:
        raise OwnerQueueFull(owner, share.tasks)
    if share.bytes and held + size > share.bytes:
        raise OwnerBytesFull(owner, held, size, share.bytes)


def queue_deadline(task: task_pb2.Task) -> float | None:
    """When a queued task that has not started ends instead (Unix seconds; see
    Task.queue_deadline): its due time while it is queued. None: it waits as long as it takes."""
    return task.queue_deadline.ToNanoseconds() / 1e9 if task.HasField("queue_deadline") else None


def queued_bytes(fixed: bytes, values: Mapping[str, bytes] | None) -> int:
    """What a task's submission stores, as an owner's share of the queue counts it: its fixed
    part and the values its input put beside it (the Redis create scripts count the same)."""
    return len(fixed) + sum(len(data) for data in (values or {}).values())


class RequestIdReused(AlreadyExists):
    """The principal used this request_id before for a different request; raised by create_task."""

    def __init__(self, request_id: str, task_id: str) -> None:
        super().__init__(
            f"request_id {request_id!r} was used before for a different request (task {task_id}): "
            "a request_id names one submission; use a new one for a new request",
            reason="REQUEST_ID_REUSED",
            metadata={"request_id": request_id},
        )


def request_task_id(owner: str, request_id: str) -> str:
    """The id of the task a principal's request_id names: the idempotency key lives in the
    principal's namespace, and the store dedupes on the task's own key."""
    return hashlib.sha256(f"{owner}\0{request_id}".encode()).hexdigest()[:32]


def rerun_dedupe_key(request_id: str) -> str:
    """How a rerun's request_id is kept apart from a submission's with the same id."""
    return f"rerun:{request_id}"


class CreateTask:
    """`create_task`, which both stores derive the same way from their `create_leased`."""

    async def create_leased(
        self,
        task: task_pb2.Task,
        event: task_pb2.TaskEvent,
        holder: str,
        lease_seconds: float,
        max_queue: int = 0,
        fingerprint: str = "",
        values: Mapping[str, bytes] | None = None,
        kept: Kept | None = None,
        group: QueueGroup | None = None,
        follow: bool = False,
        share: OwnerShare = NO_SHARE,
    ) -> tuple[task_pb2.Task, bool, int]:
        raise NotImplementedError

    async def create_task(
        self,
        task: task_pb2.Task,
        event: task_pb2.TaskEvent,
        max_queue: int = 0,
        fingerprint: str = "",
        values: Mapping[str, bytes] | None = None,
        group: QueueGroup | None = None,
        share: OwnerShare = NO_SHARE,
    ) -> tuple[task_pb2.Task, bool]:
        """Store a new PENDING task (see Store.create_task): create_leased with no holder."""
        stored, created, _ = await self.create_leased(
            task, event, "", 0.0, max_queue, fingerprint, values, group=group, share=share
        )
        return stored, created


def stored_run(text: str | bytes) -> tuple[int, str]:
    """A schedule's newest run that started a task, as both stores keep it: JSON [fire ms, task id]."""
    fire, task_id = json.loads(text)
    return int(fire), str(task_id)
