"""Starting a schedule's tasks: one per fire time (its request_id derived from the schedule and
the fire time, so a fire time dealt with twice, by two replicas or after a crash, starts one
task), the overlap policy against the schedule's unfinished tasks, catch-up after downtime,
and the record of what was done."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from mcp_sdk.proto import schedule_pb2, task_pb2
from mcp_server.engine.ports import NEVER, ScheduleProgress, ScheduleRecord, ScheduleStore, TaskStore
from mcp_server.errors import McpError, ResourceExhausted, Unavailable, ViolationCollector
from mcp_server.schedules.spec import CompiledSpec, compile_spec, from_ms, rfc3339, to_ms
from mcp_server.state.common import TERMINAL

log = logging.getLogger(__name__)

SCHEDULE_LABEL = "mcp/schedule"
FIRE_TIME_LABEL = "mcp/fire-time"
# at most this many fire times are looked at in one firing (a long downtime of a fast schedule)
MAX_FIRES_AT_ONCE = 100_000
# a schedule with a buffered fire time looks again this often whether the previous task ended
BUFFER_RECHECK_MS = 500
MAX_REFUSAL = 1000  # characters of a refusal kept with the fire time

P = schedule_pb2.OverlapPolicy
SubmitAs = Callable[[task_pb2.SubmitTaskRequest, str], Awaitable[tuple[task_pb2.Task, bool]]]
CancelSoon = Callable[[str, str], Awaitable[object]]
Observe = Callable[[str, float], None]  # (outcome, lateness seconds or 0)


@dataclass
class Outcome:
    """What starting a run of fire times did."""

    started: list[tuple[int, str]] = field(default_factory=list)
    # of those, the new ones (a fire time dealt with before, here or elsewhere, has its task already)
    fresh: list[tuple[int, str]] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    refused: list[tuple[int, str]] = field(default_factory=list)  # (fire time ms, why)
    buffered_ms: int | None = None


class Firing:
    def __init__(
        self, schedules: ScheduleStore, tasks: TaskStore, submit_as: SubmitAs, cancel_soon: CancelSoon, observe: Observe
    ) -> None:
        self.schedules = schedules
        self.tasks = tasks
        self.submit_as = submit_as
        self.cancel_soon = cancel_soon
        self.observe = observe
        self._specs: dict[tuple[str, int], CompiledSpec] = {}

    def spec_of(self, record: ScheduleRecord, schedule: schedule_pb2.Schedule) -> CompiledSpec:
        """The compiled spec of this version of the schedule (checked when it was stored)."""
        key = (record.schedule_id, record.version)
        spec = self._specs.get(key)
        if spec is None:
            spec = compile_spec(schedule.spec, ViolationCollector(), "schedule.spec")
            if spec is None:
                raise ValueError(f"schedule {record.schedule_id}: its stored spec does not compile")
            if len(self._specs) > 100_000:
                self._specs.clear()
            self._specs[key] = spec
        return spec

    async def fire_due(self, record: ScheduleRecord, now: datetime) -> None:
        """Deal with every fire time of `record` due by `now` (a schedule claimed as due)."""
        schedule = schedule_pb2.Schedule.FromString(record.data)
        if schedule.paused:  # nothing fires; a fire time a backfill buffered still waits its turn
            outcome = await self.start_fires(record, schedule, [], P.OVERLAP_POLICY_BUFFER_ONE, record.buffered_ms)
            waiting = record.buffered_ms and outcome.buffered_ms is None
            await self.schedules.record_progress(
                record.schedule_id,
                ScheduleProgress(
                    started=outcome.started,
                    buffered_ms=outcome.buffered_ms,
                    due_ms=to_ms(now) + BUFFER_RECHECK_MS if waiting else NEVER,
                    version=record.version,
                ),
            )
            return
        spec = self.spec_of(record, schedule)
        after = from_ms(record.last_fire_ms) if record.last_fire_ms else from_ms(record.created_ms)
        due: list[datetime] = []
        upcoming: datetime | None = None
        for fire in spec.fires_after(after):
            if spec.starts_at(record.schedule_id, fire) > now or len(due) >= MAX_FIRES_AT_ONCE:
                upcoming = fire
                break
            due.append(fire)
        window = schedule.catchup_window.ToTimedelta()
        running = [f for f in due if now - f <= window] if window else due[-1:]
        outcome = await self.start_fires(record, schedule, running, schedule.overlap, record.buffered_ms)
        missed = len(due) - len(running)
        for _ in range(missed):
            self.observe("missed", 0.0)
        due_ms = NEVER
        if upcoming is not None:
            due_ms = to_ms(spec.starts_at(record.schedule_id, upcoming))
        if outcome.buffered_ms or (record.buffered_ms and outcome.buffered_ms is None):  # one still waits
            recheck = to_ms(now) + BUFFER_RECHECK_MS
            due_ms = recheck if due_ms == NEVER else min(due_ms, recheck)
        await self.schedules.record_progress(
            record.schedule_id,
            ScheduleProgress(
                started=outcome.started,
                skipped=outcome.skipped,
                refused=outcome.refused,
                missed=missed,
                last_fire_ms=to_ms(due[-1]) if due else None,
                buffered_ms=outcome.buffered_ms if outcome.buffered_ms is not None else None,
                due_ms=due_ms,
                version=record.version,
            ),
        )

    async def start_fires(
        self,
        record: ScheduleRecord,
        schedule: schedule_pb2.Schedule,
        fires: Sequence[datetime],
        overlap: int,
        buffered_ms: int = 0,
    ) -> Outcome:
        """Start a task for each fire time in order, as `overlap` says against the schedule's
        unfinished tasks (those of its recent runs, and those started here)."""
        outcome = Outcome()
        policy = overlap or P.OVERLAP_POLICY_SKIP
        unfinished: list[str] = []
        if policy != P.OVERLAP_POLICY_ALLOW_ALL:
            # one at a time under the other policies: only the latest task can be unfinished
            # the newer of the two: the recent list alone loses the task once it outlasts as many
            # skipped fires as it holds, and a replica of an earlier release records only the list
            listed = next(((fire, task_id) for fire, task_id in record.recent if task_id), (0, ""))
            latest = max(record.latest_run, listed)[1]
            unfinished = await self._unfinished([latest] if latest else [])
        if buffered_ms and not unfinished:  # the buffered fire time's turn has come
            unfinished = await self._start(record, schedule, from_ms(buffered_ms), outcome)
            outcome.buffered_ms = 0
        for fire in fires:
            if unfinished and policy == P.OVERLAP_POLICY_SKIP:
                outcome.skipped.append(to_ms(fire))
                self.observe("skipped", 0.0)
                continue
            if unfinished and policy == P.OVERLAP_POLICY_BUFFER_ONE:
                outcome.buffered_ms = to_ms(fire)  # a later fire time replaces the one buffered
                self.observe("buffered", 0.0)
                continue
            if unfinished and policy == P.OVERLAP_POLICY_CANCEL_OTHER:
                for task_id in unfinished:
                    await self.cancel_soon(
                        task_id, f"schedule {record.schedule_id}: its fire time {rfc3339(fire)} came"
                    )
            started = await self._start(record, schedule, fire, outcome)
            unfinished = [*unfinished, *started] if policy == P.OVERLAP_POLICY_ALLOW_ALL else started
        return outcome

    async def _start(
        self, record: ScheduleRecord, schedule: schedule_pb2.Schedule, fire: datetime, outcome: Outcome
    ) -> list[str]:
        request = task_pb2.SubmitTaskRequest()
        request.CopyFrom(schedule.action)
        request.request_id = f"schedule:{record.schedule_id}:{to_ms(fire)}"
        request.labels[SCHEDULE_LABEL] = record.schedule_id
        request.labels[FIRE_TIME_LABEL] = rfc3339(fire)
        try:
            task, created = await self.submit_as(request, record.owner)
        except (Unavailable, ResourceExhausted):
            raise  # the store or the queue cannot take it now: the schedule is fired again when its lease ends
        except McpError as exc:
            log.warning("schedule %s: its fire time %s started no task: %s", record.schedule_id, rfc3339(fire), exc)
            self.observe("failed", 0.0)
            outcome.refused.append((to_ms(fire), f"{exc.reason}: {exc.message}"[:MAX_REFUSAL]))
            return []
        lateness = (datetime.now(tz=fire.tzinfo) - fire).total_seconds()
        self.observe("started", max(0.0, lateness))
        outcome.started.append((to_ms(fire), task.task_id))
        if created:
            outcome.fresh.append((to_ms(fire), task.task_id))
        return [task.task_id] if task.status not in TERMINAL else []

    async def _unfinished(self, task_ids: Sequence[str]) -> list[str]:
        found = []
        for task_id in task_ids:
            task = await self.tasks.get_task(task_id)
            if task is not None and task.status not in TERMINAL:
                found.append(task_id)
        return found
