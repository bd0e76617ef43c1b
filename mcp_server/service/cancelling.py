"""Cancelling a task: a queued one in the store, one running here at once, one running on
another replica through a request it acts on within a second."""

from __future__ import annotations

import asyncio

from mcp_sdk.proto import task_pb2
from mcp_server.auth import ANONYMOUS_ADMIN, Principal
from mcp_server.engine.context import now
from mcp_server.engine.dispatcher import Dispatcher
from mcp_server.engine.event_types import E
from mcp_server.engine.ports import TaskQueue, TaskStore
from mcp_server.errors import FailedPrecondition
from mcp_server.service.access import visible_task
from mcp_server.service.task_reads import TaskReads
from mcp_server.state.common import TERMINAL


class Cancelling:
    def __init__(
        self, queue: TaskQueue, tasks: TaskStore, dispatcher: Dispatcher, reads: TaskReads, lease_seconds: float
    ) -> None:
        self.queue = queue
        self.tasks = tasks
        self.dispatcher = dispatcher
        self.reads = reads
        self.lease_seconds = lease_seconds

    async def cancel_task(self, task_id: str, reason: str, principal: Principal = ANONYMOUS_ADMIN) -> task_pb2.Task:
        """Cancel a pending or running task; cancelling a cancelled task again changes nothing."""
        task = await visible_task(self.tasks, task_id, principal)
        if task.status == task_pb2.TASK_STATUS_CANCELLED:
            return await self.reads.get_task(task_id, principal)
        if task.status in TERMINAL:
            raise FailedPrecondition(
                f"task {task_id} already finished as {task_pb2.TaskStatus.Name(task.status)}", reason="TASK_FINISHED"
            )
        why = reason or "cancelled by request"
        event = task_pb2.TaskEvent(task_id=task_id, type=E.TASK_EVENT_TYPE_CANCELLED, time=now(), message=why)
        cancelled = await self.queue.cancel_pending(task_id, event)
        if cancelled is None and not await self.dispatcher.cancel(task_id, why):
            # It runs on another replica: leave a request there; that replica acts within a second.
            await self.queue.request_cancel(task_id, why)
            async with asyncio.timeout(self.lease_seconds + 5):
                while (latest := await visible_task(self.tasks, task_id, principal)).status not in TERMINAL:
                    await self.tasks.wait_events(task_id, latest.last_sequence, timeout=0.5)
        return await self.reads.get_task(task_id, principal)
