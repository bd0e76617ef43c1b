"""The client's schedule methods: tasks started on a clock (see schedule.proto)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence

from google.protobuf import field_mask_pb2

from mcp_sdk.connection import Connection
from mcp_sdk.definitions import submit_request
from mcp_sdk.proto import schedule_pb2, task_pb2
from mcp_sdk.values import JsonValue

OVERLAP = {
    "skip": schedule_pb2.OVERLAP_POLICY_SKIP,
    "buffer_one": schedule_pb2.OVERLAP_POLICY_BUFFER_ONE,
    "allow_all": schedule_pb2.OVERLAP_POLICY_ALLOW_ALL,
    "cancel_other": schedule_pb2.OVERLAP_POLICY_CANCEL_OTHER,
}


def schedule_spec(
    cron: Sequence[str] = (),
    every: Sequence[float] = (),
    at: dt.datetime | None = None,
    time_zone: str = "",
    jitter: float = 0,
) -> schedule_pb2.ScheduleSpec:
    """A ScheduleSpec: cron expressions, intervals in seconds, a one-off time (aware datetime)."""
    spec = schedule_pb2.ScheduleSpec(cron=list(cron), time_zone=time_zone)
    for seconds in every:
        spec.every.add().FromNanoseconds(int(seconds * 1e9))
    if at is not None:
        spec.run_at.FromDatetime(at.astimezone(dt.UTC).replace(tzinfo=None))
    if jitter:
        spec.jitter.FromNanoseconds(int(jitter * 1e9))
    return spec


class ScheduleMethods(Connection):
    async def create_schedule(
        self,
        schedule_id: str,
        workflow_id: str,
        input: Mapping[str, JsonValue] | None = None,
        *,
        cron: Sequence[str] = (),
        every: Sequence[float] = (),
        at: dt.datetime | None = None,
        time_zone: str = "",
        overlap: str = "skip",
        catchup_window: float = 0,
        paused: bool = False,
        note: str = "",
        priority: int = 0,
        labels: Mapping[str, str] | None = None,
    ) -> schedule_pb2.Schedule:
        """A schedule that submits `workflow_id` with `input` at every fire time of its cron
        expressions (in `time_zone`), intervals (seconds) and `at`; `overlap` is skip, buffer_one,
        allow_all or cancel_other; `catchup_window` (seconds) how late a missed fire time may
        still run after downtime."""
        action = submit_request(workflow_id, input, None, priority, labels, 0)
        action.request_id = ""  # each fire time gets its own
        schedule = schedule_pb2.Schedule(
            schedule_id=schedule_id,
            spec=schedule_spec(cron, every, at, time_zone),
            action=action,
            overlap=OVERLAP[overlap],
            paused=paused,
            note=note,
        )
        if catchup_window:
            schedule.catchup_window.FromNanoseconds(int(catchup_window * 1e9))
        reply: schedule_pb2.Schedule = await self._call(
            self.schedules.CreateSchedule, schedule_pb2.CreateScheduleRequest(schedule=schedule)
        )
        return reply

    async def get_schedule(self, schedule_id: str) -> schedule_pb2.Schedule:
        """A schedule with its info: next fire times, recent runs, counts."""
        reply: schedule_pb2.Schedule = await self._call(
            self.schedules.GetSchedule, schedule_pb2.GetScheduleRequest(schedule_id=schedule_id)
        )
        return reply

    async def list_schedules(self) -> list[schedule_pb2.Schedule]:
        """Every schedule this principal may see, across all pages."""
        return [
            s
            async for reply in self._pages(
                self.schedules.ListSchedules, schedule_pb2.ListSchedulesRequest(page_size=1000)
            )
            for s in reply.schedules
        ]

    async def update_schedule(
        self, schedule: schedule_pb2.Schedule, fields: Sequence[str] = ()
    ) -> schedule_pb2.Schedule:
        """Replace the `fields` of a schedule (spec, action, overlap, catchup_window, paused, note; all when empty)."""
        request = schedule_pb2.UpdateScheduleRequest(
            schedule=schedule, update_mask=field_mask_pb2.FieldMask(paths=list(fields))
        )
        reply: schedule_pb2.Schedule = await self._call(self.schedules.UpdateSchedule, request)
        return reply

    async def pause_schedule(self, schedule_id: str, note: str = "") -> schedule_pb2.Schedule:
        """Stop firing (until unpaused), saying why in `note`."""
        return await self.update_schedule(
            schedule_pb2.Schedule(schedule_id=schedule_id, paused=True, note=note), ["paused", "note"]
        )

    async def unpause_schedule(self, schedule_id: str, note: str = "") -> schedule_pb2.Schedule:
        """Fire again from now on (what came due while paused does not run)."""
        return await self.update_schedule(
            schedule_pb2.Schedule(schedule_id=schedule_id, paused=False, note=note), ["paused", "note"]
        )

    async def delete_schedule(self, schedule_id: str) -> None:
        await self._call(self.schedules.DeleteSchedule, schedule_pb2.DeleteScheduleRequest(schedule_id=schedule_id))

    async def trigger_schedule(self, schedule_id: str) -> task_pb2.Task:
        """Start the schedule's task now, whatever its spec (paused or not)."""
        reply: task_pb2.SubmitTaskResponse = await self._call(
            self.schedules.TriggerSchedule, schedule_pb2.TriggerScheduleRequest(schedule_id=schedule_id)
        )
        return reply.task

    async def backfill_schedule(
        self, schedule_id: str, start: dt.datetime, end: dt.datetime, overlap: str = "allow_all"
    ) -> int:
        """Start a task for every fire time in [start, end) not started before; how many started."""
        request = schedule_pb2.BackfillScheduleRequest(schedule_id=schedule_id, overlap=OVERLAP[overlap])
        request.start_time.FromDatetime(start.astimezone(dt.UTC).replace(tzinfo=None))
        request.end_time.FromDatetime(end.astimezone(dt.UTC).replace(tzinfo=None))
        reply: schedule_pb2.BackfillScheduleResponse = await self._call(self.schedules.BackfillSchedule, request)
        return reply.runs
