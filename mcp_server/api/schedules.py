"""ScheduleService servicer: unpack, call the orchestrator, pack."""

from __future__ import annotations

import grpc

from mcp_sdk.proto import schedule_pb2, schedule_pb2_grpc, task_pb2
from mcp_server.auth import current_principal
from mcp_server.errors import FieldViolation, InvalidArgument
from mcp_server.orchestrator import Orchestrator


def _schedule_of(
    request: schedule_pb2.CreateScheduleRequest | schedule_pb2.UpdateScheduleRequest,
) -> schedule_pb2.Schedule:
    if not request.HasField("schedule"):
        raise InvalidArgument("schedule is required", violations=[FieldViolation("schedule", "is required")])
    return request.schedule


class ScheduleServicer(schedule_pb2_grpc.ScheduleServiceServicer):
    def __init__(self, orchestrator: Orchestrator) -> None:
        self.schedules = orchestrator.schedules

    async def CreateSchedule(
        self, request: schedule_pb2.CreateScheduleRequest, context: grpc.aio.ServicerContext
    ) -> schedule_pb2.Schedule:
        return await self.schedules.create_schedule(_schedule_of(request), current_principal.get())

    async def GetSchedule(
        self, request: schedule_pb2.GetScheduleRequest, context: grpc.aio.ServicerContext
    ) -> schedule_pb2.Schedule:
        return await self.schedules.get_schedule(request.schedule_id, current_principal.get())

    async def ListSchedules(
        self, request: schedule_pb2.ListSchedulesRequest, context: grpc.aio.ServicerContext
    ) -> schedule_pb2.ListSchedulesResponse:
        found, token = await self.schedules.list_schedules(
            request.page_size, request.page_token, current_principal.get()
        )
        return schedule_pb2.ListSchedulesResponse(schedules=found, next_page_token=token)

    async def UpdateSchedule(
        self, request: schedule_pb2.UpdateScheduleRequest, context: grpc.aio.ServicerContext
    ) -> schedule_pb2.Schedule:
        return await self.schedules.update_schedule(_schedule_of(request), request.update_mask, current_principal.get())

    async def DeleteSchedule(
        self, request: schedule_pb2.DeleteScheduleRequest, context: grpc.aio.ServicerContext
    ) -> schedule_pb2.DeleteScheduleResponse:
        await self.schedules.delete_schedule(request.schedule_id, current_principal.get())
        return schedule_pb2.DeleteScheduleResponse()

    async def TriggerSchedule(
        self, request: schedule_pb2.TriggerScheduleRequest, context: grpc.aio.ServicerContext
    ) -> task_pb2.SubmitTaskResponse:
        task, created = await self.schedules.trigger_schedule(request.schedule_id, current_principal.get())
        return task_pb2.SubmitTaskResponse(task=task, created=created)

    async def BackfillSchedule(
        self, request: schedule_pb2.BackfillScheduleRequest, context: grpc.aio.ServicerContext
    ) -> schedule_pb2.BackfillScheduleResponse:
        runs = await self.schedules.backfill_schedule(request, current_principal.get())
        return schedule_pb2.BackfillScheduleResponse(runs=runs)
