"""The schedules port: schedule definitions, what they did, and which are due to fire.

A schedule's due time is also its lease: claiming a due schedule moves its due time to the end
of the lease, so no other replica takes it meanwhile, and a replica that dies holding it hands
it over when that time comes. (Two replicas firing the same time start one task anyway: its
request_id is derived from the schedule and the fire time.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

# `due_ms` of a schedule that fires no more (paused, or past its last fire time)
NEVER = -1


@dataclass(frozen=True)
class ScheduleRecord:
    """A stored schedule: its definition (a serialized Schedule without info) and its progress."""

    schedule_id: str
    owner: str
    data: bytes
    version: int  # bumped by every update of the definition
    created_ms: int
    runs: int = 0
    skipped: int = 0
    missed: int = 0
    last_fire_ms: int = 0  # the latest fire time dealt with (0: none yet)
    buffered_ms: int = 0  # a fire time waiting for the previous task to end (BUFFER_ONE; 0: none)
    recent: Sequence[tuple[int, str]] = ()  # (fire time ms, task id or ""), newest first
    refused: int = 0
    refusals: Sequence[tuple[int, str]] = ()  # (fire time ms, why its task was refused), newest first
    # (fire time ms, task id) of the newest fire time that started a task, kept however many skips
    # push it out of `recent` (the overlap policies' "last task"; (0, "") when none yet)
    latest_run: tuple[int, str] = (0, "")


@dataclass(frozen=True)
class ScheduleProgress:
    """What one firing did, written atomically: runs, skips and refusals appended to the recent
    list and counted, `missed` added, and (when given) the latest fire time, the buffered one and the
    next due time. `version` guards the due time: an update of the definition meanwhile has
    set its own."""

    started: Sequence[tuple[int, str]] = ()
    skipped: Sequence[int] = ()
    refused: Sequence[tuple[int, str]] = ()  # (fire time ms, why), in the recent list as "" and counted
    missed: int = 0
    last_fire_ms: int | None = None
    buffered_ms: int | None = None
    due_ms: int | None = None
    version: int = 0


RECENT_RUNS = 10


class ScheduleStore(Protocol):
    async def create_schedule(self, schedule_id: str, owner: str, data: bytes, created_ms: int, due_ms: int) -> bool:
        """Store a new schedule, due at `due_ms` (NEVER: not due); False if the id is taken."""
        ...

    async def get_schedule(self, schedule_id: str) -> ScheduleRecord | None: ...

    async def list_schedules(self, owner: str | None, after: str, limit: int) -> list[ScheduleRecord]:
        """Up to `limit` schedules with ids after `after`, in id order; only `owner`'s unless None."""
        ...

    async def update_schedule(self, schedule_id: str, data: bytes, due_ms: int, last_fire_ms: int | None) -> bool:
        """Replace the definition (bumping its version) and the due time; False if it is gone.
        `last_fire_ms`, when given, is where firing goes on from (an unpaused schedule does not
        fire what came due while it was paused)."""
        ...

    async def delete_schedule(self, schedule_id: str) -> bool: ...

    async def claim_due(self, now_ms: int, lease_ms: int, limit: int) -> list[ScheduleRecord]:
        """Up to `limit` schedules due by `now_ms`, each leased until now_ms + lease_ms."""
        ...

    async def record_progress(self, schedule_id: str, progress: ScheduleProgress) -> None:
        """Write what a firing (or a trigger, or a backfill) did; nothing if the schedule is gone."""
        ...

    async def schedule_count(self) -> int: ...
