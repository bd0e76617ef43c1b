"""TaskService servicer: unpack, call the orchestrator, pack."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from mcp_sdk.proto import task_pb2, task_pb2_grpc
from mcp_server.auth import current_principal
from mcp_server.orchestrator import Orchestrator
from mcp_server.service.access import micros

TASK_ID_HEADER = "mcp-task-id"


class TaskServicer(task_pb2_grpc.TaskServiceServicer):
    def __init__(self, orchestrator: Orchestrator) -> None:
        self.orchestrator = orchestrator

    async def SubmitTask(
        self, request: task_pb2.SubmitTaskRequest, context: grpc.aio.ServicerContext
    ) -> task_pb2.SubmitTaskResponse:
        task, created = await self.orchestrator.submission.submit_task(request, current_principal.get())
        return task_pb2.SubmitTaskResponse(task=task, created=created)

    async def RunTask(
        self, request: task_pb2.SubmitTaskRequest, context: grpc.aio.ServicerContext
    ) -> task_pb2.SubmitTaskResponse:
        async def submitted(task: task_pb2.Task) -> None:
            # Only a call with a deadline may end before the task does; without one the id comes
            # with the answer (an extra headers frame costs about 2% of a short task's CPU).
            if context.time_remaining() is not None:
                await context.send_initial_metadata(((TASK_ID_HEADER, task.task_id),))

        task, created = await self.orchestrator.submission.run_task(request, current_principal.get(), submitted)
        return task_pb2.SubmitTaskResponse(task=task, created=created)

    async def SubmitAndWatchTask(
        self, request: task_pb2.SubmitTaskRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[task_pb2.SubmitAndWatchTaskResponse]:
        task, created, batches = await self.orchestrator.submission.submit_and_watch(request, current_principal.get())
        submitted: task_pb2.SubmitTaskResponse | None = task_pb2.SubmitTaskResponse(task=task, created=created)
        async for batch in batches:
            yield task_pb2.SubmitAndWatchTaskResponse(submitted=submitted, events=batch)
            submitted = None
        if submitted is not None:  # nothing to stream (an ended task whose events are gone): still say which task
            yield task_pb2.SubmitAndWatchTaskResponse(submitted=submitted)

    async def GetTask(
        self, request: task_pb2.GetTaskRequest, context: grpc.aio.ServicerContext
    ) -> task_pb2.GetTaskResponse:
        view = request.view or task_pb2.TASK_VIEW_FULL
        return task_pb2.GetTaskResponse(
            task=await self.orchestrator.reads.get_task(request.task_id, current_principal.get(), view)
        )

    async def ListTasks(
        self, request: task_pb2.ListTasksRequest, context: grpc.aio.ServicerContext
    ) -> task_pb2.ListTasksResponse:
        tasks, token, total = await self.orchestrator.reads.list_tasks(
            request.page_size,
            request.page_token,
            list(request.statuses),
            request.workflow_id,
            current_principal.get(),
            request.view or task_pb2.TASK_VIEW_BASIC,
            request.owner,
            dict(request.labels),
            (micros(request, "created_after"), micros(request, "created_before")),
        )
        return task_pb2.ListTasksResponse(tasks=tasks, next_page_token=token, total_size=total)

    async def ListTaskSteps(
        self, request: task_pb2.ListTaskStepsRequest, context: grpc.aio.ServicerContext
    ) -> task_pb2.ListTaskStepsResponse:
        steps, token, total = await self.orchestrator.reads.list_task_steps(
            request.task_id, request.page_size, request.page_token, current_principal.get()
        )
        return task_pb2.ListTaskStepsResponse(steps=steps, next_page_token=token, total_size=total)

    async def ReadValue(
        self, request: task_pb2.ReadValueRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[task_pb2.ValueChunk]:
        async for chunk in self.orchestrator.reads.read_value(
            request.task_id, request.step_path, request.field, current_principal.get()
        ):
            yield chunk

    async def CancelTask(
        self, request: task_pb2.CancelTaskRequest, context: grpc.aio.ServicerContext
    ) -> task_pb2.CancelTaskResponse:
        return task_pb2.CancelTaskResponse(
            task=await self.orchestrator.cancelling.cancel_task(
                request.task_id, request.reason, current_principal.get()
            )
        )

    async def DeleteTask(
        self, request: task_pb2.DeleteTaskRequest, context: grpc.aio.ServicerContext
    ) -> task_pb2.DeleteTaskResponse:
        return task_pb2.DeleteTaskResponse(
            deleted=await self.orchestrator.deleting.delete_task(
                request.task_id, current_principal.get(), request.allow_missing
            )
        )

    async def WatchTask(
        self, request: task_pb2.WatchTaskRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[task_pb2.TaskEvent]:
        batches = await self.orchestrator.watching.open_watch(
            request.task_id, request.after_sequence, current_principal.get()
        )
        async for batch in batches:
            for event in batch:
                yield event

    async def WatchTaskEvents(
        self, request: task_pb2.WatchTaskRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[task_pb2.WatchTaskEventsResponse]:
        batches = await self.orchestrator.watching.open_watch(
            request.task_id, request.after_sequence, current_principal.get(), batched=True
        )
        async for batch in batches:
            yield task_pb2.WatchTaskEventsResponse(events=batch)

    async def SignalTask(
        self, request: task_pb2.SignalTaskRequest, context: grpc.aio.ServicerContext
    ) -> task_pb2.SignalTaskResponse:
        return await self.orchestrator.signalling.signal_task(request, current_principal.get())

    async def RerunTask(
        self, request: task_pb2.RerunTaskRequest, context: grpc.aio.ServicerContext
    ) -> task_pb2.SubmitTaskResponse:
        task, created = await self.orchestrator.reruns.rerun_task(request, current_principal.get())
        return task_pb2.SubmitTaskResponse(task=task, created=created)
