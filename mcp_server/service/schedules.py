"""ScheduleService: schedules checked, stored, read with what they did and will do, updated,
triggered and backfilled. Firing itself is schedules/firing.py, run by schedules/scheduler.py."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

from google.protobuf import field_mask_pb2, timestamp_pb2

from mcp_sdk.proto import schedule_pb2, task_pb2
from mcp_server.auth import ANONYMOUS_ADMIN, Principal
from mcp_server.engine.ports import NEVER, ScheduleProgress, ScheduleRecord, ScheduleStore, TaskStore
from mcp_server.errors import AlreadyExists, FieldViolation, InvalidArgument, NotFound, ViolationCollector
from mcp_server.schedules.firing import Firing
from mcp_server.schedules.spec import EPOCH, CompiledSpec, compile_spec, from_ms, moment_of, to_ms
from mcp_server.service.access import fitting, require
from mcp_server.service.submission import Submission

MAX_CATCHUP_SECONDS = 366 * 24 * 3600
MAX_BACKFILL_FIRES = 10_000
NEXT_FIRE_TIMES = 5
UPDATABLE = ("spec", "action", "overlap", "catchup_window", "paused", "note")
MESSAGE_FIELDS = ("spec", "action", "catchup_window")
P = schedule_pb2.OverlapPolicy


class Schedules:
    def __init__(self, schedules: ScheduleStore, tasks: TaskStore, submission: Submission, firing: Firing) -> None:
        self.store = schedules
        self.tasks = tasks
        self.submission = submission
        self.firing = firing

    async def create_schedule(
        self, schedule: schedule_pb2.Schedule, principal: Principal = ANONYMOUS_ADMIN
    ) -> schedule_pb2.Schedule:
        require("schedule.schedule_id", schedule.schedule_id)
        stored = schedule_pb2.Schedule()
        stored.CopyFrom(schedule)
        stored.ClearField("info")
        stored.owner = principal.name
        now = time.time()
        stored.create_time.FromMilliseconds(int(now * 1000))
        spec = await self._check(stored, principal)
        due = NEVER if stored.paused else self._first_due(stored.schedule_id, spec, datetime.fromtimestamp(now, UTC))
        if not stored.paused and due == NEVER:
            raise _invalid("schedule.spec", "it has no fire time from now on (run_at or end_time passed)")
        if not await self.store.create_schedule(
            stored.schedule_id, principal.name, stored.SerializeToString(), int(now * 1000), due
        ):
            raise AlreadyExists(
                f"schedule {stored.schedule_id!r} exists",
                reason="SCHEDULE_EXISTS",
                metadata={"schedule_id": stored.schedule_id},
            )
        return await self.get_schedule(stored.schedule_id, principal)

    async def get_schedule(self, schedule_id: str, principal: Principal = ANONYMOUS_ADMIN) -> schedule_pb2.Schedule:
        return await self._view(await self._visible(schedule_id, principal))

    async def list_schedules(
        self, page_size: int, page_token: str, principal: Principal = ANONYMOUS_ADMIN
    ) -> tuple[list[schedule_pb2.Schedule], str]:
        size = page_size or 100
        records = await self.store.list_schedules(None if principal.is_admin else principal.name, page_token, size + 1)
        shown = fitting([await self._view(r) for r in records[:size]], self.submission.settings.limits)
        return shown, shown[-1].schedule_id if len(records) > len(shown) else ""

    async def update_schedule(
        self,
        schedule: schedule_pb2.Schedule,
        mask: field_mask_pb2.FieldMask,
        principal: Principal = ANONYMOUS_ADMIN,
    ) -> schedule_pb2.Schedule:
        record = await self._visible(schedule.schedule_id, principal)
        current = schedule_pb2.Schedule.FromString(record.data)
        paths = list(mask.paths) or list(UPDATABLE)
        unknown = [p for p in paths if p not in UPDATABLE]
        if unknown:
            raise _invalid("update_mask", f"cannot update {unknown[0]!r}; these can be: {', '.join(UPDATABLE)}")
        updated = schedule_pb2.Schedule()
        updated.CopyFrom(current)
        for path in paths:
            if path not in MESSAGE_FIELDS:
                setattr(updated, path, getattr(schedule, path))
            elif schedule.HasField(path):
                getattr(updated, path).CopyFrom(getattr(schedule, path))
            else:
                updated.ClearField(path)
        spec = await self._check(updated, Principal(record.owner, frozenset()))
        now = datetime.now(UTC)
        due = NEVER if updated.paused else self._first_due(updated.schedule_id, spec, now)
        # a change of when or whether it fires goes on from now: what came due before is not fired
        moved = updated.spec != current.spec or updated.paused != current.paused
        if not await self.store.update_schedule(
            updated.schedule_id, updated.SerializeToString(), due, to_ms(now) if moved else None
        ):
            raise _not_found(updated.schedule_id)
        return await self.get_schedule(updated.schedule_id, principal)

    async def delete_schedule(self, schedule_id: str, principal: Principal = ANONYMOUS_ADMIN) -> None:
        await self._visible(schedule_id, principal)
        if not await self.store.delete_schedule(schedule_id):
            raise _not_found(schedule_id)

    async def trigger_schedule(
        self, schedule_id: str, principal: Principal = ANONYMOUS_ADMIN
    ) -> tuple[task_pb2.Task, bool]:
        """A task now, whatever the spec (paused or not); overlap does not apply."""
        record = await self._visible(schedule_id, principal)
        schedule = schedule_pb2.Schedule.FromString(record.data)
        now = datetime.fromtimestamp(round(time.time() * 1000) / 1000, UTC)
        outcome = await self.firing.start_fires(record, schedule, [now], P.OVERLAP_POLICY_ALLOW_ALL)
        if not outcome.started:
            raise InvalidArgument(
                f"schedule {schedule_id}: its action cannot be submitted now (see the server log)",
                reason="SCHEDULE_ACTION_REFUSED",
            )
        await self.store.record_progress(schedule_id, ScheduleProgress(started=outcome.started))
        task = await self.tasks.get_task(outcome.started[0][1])
        assert task is not None
        return task, True

    async def backfill_schedule(
        self,
        request: schedule_pb2.BackfillScheduleRequest,
        principal: Principal = ANONYMOUS_ADMIN,
    ) -> int:
        record = await self._visible(request.schedule_id, principal)
        violations = ViolationCollector()
        if not request.HasField("start_time"):
            violations.add("start_time", "is required")
        if not request.HasField("end_time"):
            violations.add("end_time", "is required")
        start = moment_of(request.start_time, violations, "start_time", earliest=EPOCH)
        end = moment_of(request.end_time, violations, "end_time", earliest=EPOCH)
        violations.raise_if_any("the backfill is invalid")
        assert start is not None and end is not None
        if end <= start:
            raise _invalid("end_time", "must be after start_time")
        schedule = schedule_pb2.Schedule.FromString(record.data)
        fires = self.firing.spec_of(record, schedule).fires_between(start, end, MAX_BACKFILL_FIRES + 1)
        if len(fires) > MAX_BACKFILL_FIRES:
            raise _invalid(
                "end_time", f"the range holds more than {MAX_BACKFILL_FIRES} fire times; backfill it in parts"
            )
        outcome = await self.firing.start_fires(record, schedule, fires, request.overlap or P.OVERLAP_POLICY_ALLOW_ALL)
        # BUFFER_ONE: the last fire time that had to wait starts when the task before it ends (the
        # scheduler looks soon, and again until then)
        due = int(time.time() * 1000) if outcome.buffered_ms else None
        await self.store.record_progress(
            request.schedule_id,
            ScheduleProgress(
                started=outcome.fresh,
                skipped=outcome.skipped,
                buffered_ms=outcome.buffered_ms,
                due_ms=due,
                version=record.version,
            ),
        )
        return len(outcome.fresh)

    async def _check(self, schedule: schedule_pb2.Schedule, owner: Principal) -> CompiledSpec:
        """The schedule's spec compiled; InvalidArgument naming every problem (its action too:
        it must be a submission its owner could make now)."""
        violations = ViolationCollector()
        spec = compile_spec(schedule.spec, violations, "schedule.spec") if schedule.HasField("spec") else None
        if not schedule.HasField("spec"):
            violations.add("schedule.spec", "is required")
        if schedule.overlap not in P.values():
            violations.add("schedule.overlap", f"unknown overlap policy {schedule.overlap}")
        window = schedule.catchup_window.ToTimedelta()
        if not timedelta(0) <= window <= timedelta(seconds=MAX_CATCHUP_SECONDS):
            violations.add("schedule.catchup_window", f"must be between 0 and {MAX_CATCHUP_SECONDS} seconds")
        if not schedule.action.workflow_id:
            violations.add("schedule.action.workflow_id", "is required")
        elif schedule.action.request_id:
            violations.add("schedule.action.request_id", "is set by the schedule for each fire time; leave it empty")
        violations.raise_if_any(f"schedule {schedule.schedule_id!r} is invalid")
        try:
            await self.submission.check_submittable(schedule.action, owner)
        except (InvalidArgument, NotFound) as exc:  # its fields named from the schedule (an input a schema rejects)
            fields = [FieldViolation(f"schedule.action.{v.field}", v.description) for v in exc.violations]
            raise InvalidArgument(
                f"schedule.action: {exc.message}",
                violations=fields or [FieldViolation("schedule.action", exc.message)],
                reason="BAD_SCHEDULE",
            ) from None
        assert spec is not None
        return spec

    @staticmethod
    def _first_due(schedule_id: str, spec: CompiledSpec, now: datetime) -> int:
        due = spec.first_due_ms(schedule_id, now)
        return NEVER if due is None else due

    async def _visible(self, schedule_id: str, principal: Principal) -> ScheduleRecord:
        require("schedule_id", schedule_id)
        record = await self.store.get_schedule(schedule_id)
        if record is None or not (principal.is_admin or record.owner == principal.name):
            raise _not_found(schedule_id)
        return record

    async def _view(self, record: ScheduleRecord) -> schedule_pb2.Schedule:
        schedule = schedule_pb2.Schedule.FromString(record.data)
        info = schedule.info
        info.runs, info.skipped, info.missed, info.refused = record.runs, record.skipped, record.missed, record.refused
        if not schedule.paused:
            spec = self.firing.spec_of(record, schedule)
            now = datetime.now(UTC)
            for fire in spec.fires_after(max(now, from_ms(record.last_fire_ms)) if record.last_fire_ms else now):
                info.next_fire_times.append(_timestamp(fire))
                if len(info.next_fire_times) == NEXT_FIRE_TIMES:
                    break
        # the recent runs' tasks read together (one concurrent batch), not one after another
        found = await asyncio.gather(*(self.tasks.get_task(t) for _, t in record.recent if t))
        statuses = {task.task_id: task.status for task in found if task is not None}
        refusals = dict(record.refusals)
        for fire_ms, task_id in record.recent:
            run = info.recent_runs.add(task_id=task_id, status=statuses.get(task_id, 0))
            run.fire_time.FromMilliseconds(fire_ms)
            if not task_id:
                run.refusal = refusals.get(fire_ms, "")
        return schedule


def _timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromMilliseconds(to_ms(moment))
    return stamp


def _invalid(field: str, problem: str) -> InvalidArgument:
    return InvalidArgument(f"{field}: {problem}", violations=[FieldViolation(field, problem)], reason="BAD_SCHEDULE")


def _not_found(schedule_id: str) -> NotFound:
    return NotFound(
        f"schedule {schedule_id!r} not found", reason="SCHEDULE_NOT_FOUND", metadata={"schedule_id": schedule_id}
    )
