"""The waits port: signals sent to tasks, the steps that wait, and the timers of waiting tasks.

A branch that waits writes its wait (signal name, deadline) with its checkpoint. When every live
branch of a task waits, the run writes the task WAITING: it gives up its lease, and its earliest
deadline goes into a due-time index every replica polls (`release_due`). A signal is appended to
the task's signal log, in order and once per request_id (`send_signal`); it re-queues a waiting
task, or is taken in by the run that holds the task (`pending_signals` tells it there are some).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from mcp_sdk.proto import task_pb2

EVENT_SIGNAL_PREFIX = "event:"  # a colon is in no signal name SignalTask takes


def event_signal(event: str) -> str:
    """The signal a wait for event `event` waits for: only a publish of the event sends it."""
    return EVENT_SIGNAL_PREFIX + event


@dataclass(frozen=True)
class WaitRecord:
    """A step that waits: for `signal` ("" for a sleep), until `deadline_ms` (Unix ms; 0: no
    deadline of its own), since `since_ms`; `assigned` is the SIGNAL_RECEIVED sequence of a
    signal already on its way to it (0: none). A wait for an event has the `key` its event must
    carry ("": any); the stores index such a wait by (signal, key) while nothing is assigned to it,
    written with the record (`event_waiters`)."""

    signal: str
    deadline_ms: int
    since_ms: int
    assigned: int = 0
    key: str | None = None

    def encode(self) -> str:
        head = f"{self.signal}|{self.deadline_ms}|{self.since_ms}|{self.assigned}"
        return head if self.key is None else f"{head}|{self.key}"

    @classmethod
    def decode(cls, text: str) -> WaitRecord:
        signal, deadline, since, assigned, *key = text.split("|", 4)
        return cls(signal, int(deadline), int(since), int(assigned), key[0] if key else None)


@dataclass(frozen=True)
class SignalRecord:
    """One signal of a task's log. `index` orders the log (1, 2, ...); `sequence` is its
    SIGNAL_RECEIVED event (0 until the task took it in) and `assigned` the step it went to
    ("" while it is kept for the next wait of its name)."""

    index: int
    request: task_pb2.SignalTaskRequest  # signal, payload, request_id, step_path (its target)
    sequence: int = 0
    assigned: str = ""


@dataclass(frozen=True)
class SignalDelivery:
    """How a signal is written when no replica holds the task (it is queued or waiting): its
    SIGNAL_RECEIVED event and the step it goes to are written with it, compare-and-set on the
    task's last sequence (`expected_sequence`); `live` is the task's live part with that event
    counted, `wait` the new record of the step it goes to."""

    expected_sequence: int
    event: task_pb2.TaskEvent
    live: bytes
    assigned: str = ""
    wait: WaitRecord | None = None
    # a waiting task resumes where the signal came when that replica has room: it is leased to
    # `holder` for `lease_seconds` in the same write ("" to queue it instead)
    holder: str = ""
    lease_seconds: float = 0.0
    # the most signals the task may have: one more is refused ("full"); 0: no limit
    max_signals: int = 0
    # the most bytes of stored signals the task may have: one that would pass it is refused
    # ("full of bytes"); 0: no limit
    max_signal_bytes: int = 0


@dataclass(frozen=True)
class SignalOutcome:
    """What `send_signal` did. `status`: "delivered" (written with its event), "appended" (the
    replica holding the task takes it in), "duplicate" (its request_id was seen: `record` is the
    first), "stale" (the task changed since it was read: read it and try again), "finished",
    "full" (the task has `max_signals` signals already: nothing was written), "full of bytes" (this
    one would take its signals past `max_signal_bytes`: nothing was written)."""

    status: str
    record: SignalRecord | None = None
    # delivered to a waiting task and leased to the delivery's holder: the task and its token
    leased: tuple[task_pb2.Task, int] | None = None


class WaitStore(Protocol):
    async def read_signals(self, task_id: str) -> list[SignalRecord]:
        """The task's signal log, in order."""
        ...

    async def read_waits(self, task_id: str) -> dict[str, WaitRecord]:
        """The steps of the task that wait now, by path."""
        ...

    async def send_signal(
        self, task_id: str, request: task_pb2.SignalTaskRequest, delivery: SignalDelivery
    ) -> SignalOutcome:
        """Append a signal to a task that has not finished and has fewer than the delivery's
        `max_signals` (with their bytes within `max_signal_bytes`), once per request_id (a
        repeat is answered even then). If a replica holds the task (it runs), the signal waits
        there to be taken in; otherwise it is written with `delivery`, and a waiting task is
        queued to resume."""
        ...

    async def event_waiters(self, signal: str, keys: Sequence[str]) -> list[tuple[str, str, str]]:
        """The (key, task_id, step path) of every step that waits for `signal` with one of `keys`
        and has no signal on its way: written and removed with the wait records, so a task whose
        end left one behind (a cancel, a purge) may be listed until `forget_event_waiter`."""
        ...

    async def forget_event_waiter(self, signal: str, key: str, task_id: str, path: str) -> None:
        """Remove one entry `event_waiters` listed (its task is gone or has ended)."""
        ...

    async def pending_signals(self, task_ids: Sequence[str]) -> set[str]:
        """Those of `task_ids` that have signals not taken in yet."""
        ...

    def signal_nudges(self) -> AsyncIterator[str]:
        """The ids of tasks that a signal was just appended to (held by some replica), as they
        come, for as long as it is iterated; reconnects by itself. It may miss some (a dropped
        connection): `pending_signals` is the record. A store with no way to tell another process
        ends it at once (signals sent through this process are told to its runs in-process, and
        other processes' through `pending_signals`)."""
        ...

    async def release_due(self) -> tuple[int, list[str]]:
        """Queue every waiting task whose due time has come (each once, whichever replica asks);
        return how many, and the queued tasks whose queue deadline has passed (Task.queue_deadline,
        their due time while they are queued), for the caller to cancel (at most 1,000 a call).
        Such a task is handed out again by a later call until it is cancelled or started: the
        answer of this one may be lost, or the cancel refused."""
        ...

    async def waiting_count(self) -> int:
        """How many tasks are WAITING now."""
        ...

    async def resume_soon(self, task_ids: Sequence[str]) -> None:
        """Make those of `task_ids` that are parked (WAITING) with a later due time due now: the
        next `release_due` queues them (what one waits for came sooner than its timer said)."""
        ...
