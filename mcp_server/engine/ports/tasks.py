"""The task records port: a task's header, its step records, its large values and its event log.

A task is stored in parts: a fixed part written once when it is created, a small live part
rewritten at each checkpoint, one record per step, and the values (1 KB or more) each stored
once under its SHA-256. A checkpoint writes, atomically and fenced by the lease token, only
what changed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from mcp_sdk.proto import task_pb2
from mcp_server.engine.ports.waits import WaitRecord

EventListener = Callable[[task_pb2.Task, task_pb2.TaskEvent], None]
"""Told of every event a run emits, as it is emitted (for metrics, traces, logs). It must not
block and must not raise."""


class Deletion(Enum):
    """What asking a store to delete a finished task did."""

    DELETED = "deleted"
    MISSING = "missing"  # no such task: never made, purged or deleted already
    NOT_FINISHED = "not finished"  # pending, running or waiting: nothing was deleted


@dataclass(frozen=True)
class StepRecord:
    """One step state as stored: a serialized StepState whose values at or above
    SHARED_VALUE_BYTES are ValueRefs into the task's value store (content-addressed)."""

    index: int
    path: str
    data: bytes


@dataclass
class Checkpoint:
    """What one atomic, fenced write adds to a task: never the whole task again, only what changed."""

    task_id: str
    lease_token: int
    status: int
    # a serialized Task with only the fields that change: status, times, error, last_sequence,
    # step_count, result or result_ref. A read appends it to the fixed part written at create.
    live: bytes
    steps: Sequence[StepRecord] = ()
    events: Sequence[task_pb2.TaskEvent] = ()
    # serialized Values by SHA-256 that the task's value store does not hold yet
    values: Mapping[str, bytes] = field(default_factory=dict)
    # wait and sleep steps that began or stopped waiting: path -> WaitRecord, or None once it stopped
    waits: Mapping[str, WaitRecord | None] = field(default_factory=dict)
    # signals the run took in: index -> (its SIGNAL_RECEIVED event's sequence, the step it went to or "")
    signals_taken: Mapping[int, tuple[int, str]] = field(default_factory=dict)
    # with status WAITING: when the task is due to resume (Unix ms; 0: only a signal resumes it)
    due_ms: int = 0


@dataclass(frozen=True)
class TaskFilter:
    """What ListTasks asks for; empty fields match everything."""

    statuses: tuple[int, ...] = ()
    workflow_id: str = ""
    owner: str = ""
    labels: tuple[tuple[str, str], ...] = ()  # (key, value), sorted: a task must carry every one
    created_after_us: int = 0  # created at or after this (Unix microseconds; 0: any time)
    created_before_us: int = 0  # created before this (0: any time)

    def labels_match(self, task: task_pb2.Task) -> bool:
        return all(task.labels.get(key) == value for key, value in self.labels)


@dataclass(frozen=True)
class TaskPage:
    """One page of ListTasks from the store: the tasks, for each the page token that goes on
    after it, whether more tasks follow the last one, and how many match in all (0: unknown)."""

    tasks: list[task_pb2.Task]
    after: list[str]
    more: bool
    total: int


class TaskStore(Protocol):
    """Task records, their steps, values and events (tasks are created through TaskQueue)."""

    async def get_task(self, task_id: str) -> task_pb2.Task | None:
        """The task without its step states (fixed part merged with the live part)."""
        ...

    async def list_tasks(self, page_size: int, page_token: str, where: TaskFilter) -> TaskPage:
        """Tasks newest first, as get_task returns them."""
        ...

    async def reruns_of(self, task_id: str, limit: int) -> list[str]:
        """The first `limit` tasks created as reruns of `task_id` (see TaskQueue.create_leased), oldest first."""
        ...

    async def labelled(self, labels: Sequence[tuple[str, str]]) -> bool:
        """Whether some stored task (ended or not) carries one of `labels` (key, value): one cheap
        look at the label index before a listing by them."""
        ...

    async def read_steps(self, task_id: str, start: int, limit: int) -> list[StepRecord]:
        """Step records with index >= start, in index order, at most `limit`."""
        ...

    async def read_step(self, task_id: str, path: str) -> StepRecord | None: ...

    async def read_values(self, task_id: str, digests: Sequence[str]) -> dict[str, bytes]:
        """The task's stored values among `digests`, by digest."""
        ...

    async def save_checkpoint(self, checkpoint: Checkpoint) -> None:
        """Write the checkpoint atomically if `lease_token` still holds the task (LeaseLost if
        not). Safe to repeat: events already in the log are skipped."""
        ...

    async def read_events(self, task_id: str, after_sequence: int, limit: int = 1000) -> list[task_pb2.TaskEvent]:
        """Events after `after_sequence`, in order, at most `limit`, ending after the one that
        takes them to EVENTS_PAGE_BYTES (state.common)."""
        ...

    async def wait_events(self, task_id: str, after_sequence: int, timeout: float) -> list[task_pb2.TaskEvent]:
        """Events after `after_sequence`, waiting up to `timeout` for one ([] if none came)."""
        ...

    async def purge_finished(self) -> int:
        """Delete the tasks whose retention ran out, with everything they hold; return how many."""
        ...

    async def delete_finished(self, task_id: str) -> Deletion:
        """Delete one task, with everything it holds, if it has finished (atomically: a task
        that is not finished keeps everything). Its reruns keep copies of the values they share."""
        ...

    def forget_log_before(self, task_id: str, created_ns: int) -> None:
        """Forget what this process holds in memory of the log of an earlier task with this id
        (deleted or purged, then made again from the same request_id): events older than
        `created_ns` (nanoseconds since the epoch), the task's creation time."""
        ...
