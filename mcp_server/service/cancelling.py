"""Cancelling a task: a queued one in the store, one running here at once, a waiting one by
leasing it here and running it to its end, one running on another replica through a request it
is told of at once (on Redis; else its poll finds it)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from mcp_sdk.proto import task_pb2
from mcp_server.auth import ANONYMOUS_ADMIN, Principal
from mcp_server.engine.dispatcher import Dispatcher
from mcp_server.engine.ports import EventListener, TaskQueue, TaskStore
from mcp_server.engine.queued_cancels import cancel_queued
from mcp_server.errors import DeadlineExceeded, FailedPrecondition
from mcp_server.service.access import visible_task
from mcp_server.service.task_reads import TaskReads
from mcp_server.state.common import TERMINAL


class Cancelling:
    def __init__(
        self,
        queue: TaskQueue,
        tasks: TaskStore,
        dispatcher: Dispatcher,
        reads: TaskReads,
        lease_seconds: float,
        replica_id: str,
        listeners: Sequence[EventListener] = (),
    ) -> None:
        self.replica_id = replica_id
        self.listeners = listeners
        self.queue = queue
        self.tasks = tasks
        self.dispatcher = dispatcher
        self.reads = reads
        self.lease_seconds = lease_seconds

    async def cancel_task(self, task_id: str, reason: str, principal: Principal = ANONYMOUS_ADMIN) -> task_pb2.Task:
        """Cancel a pending, running or waiting task; cancelling a cancelled task again changes nothing."""
        why = reason or "cancelled by request"
        waited = self.lease_seconds + 5
        try:
            async with asyncio.timeout(waited):
                while True:
                    task = await visible_task(self.tasks, task_id, principal)
                    if task.status == task_pb2.TASK_STATUS_CANCELLED:
                        return await self.reads.get_task(task_id, principal)
                    if task.status in TERMINAL:
                        raise FailedPrecondition(
                            f"task {task_id} already finished as {task_pb2.TaskStatus.Name(task.status)}",
                            reason="TASK_FINISHED",
                        )
                    if await self._cancelled(task, why, principal):
                        return await self.reads.get_task(task_id, principal)
        except TimeoutError:
            # The request is stored: the replica running the task acts on it, or whichever takes
            # the task over from it. A client may ask again (a second cancel changes nothing).
            raise DeadlineExceeded(
                f"task {task_id} is not cancelled yet: the request is stored, but the replica running it has not"
                f" ended it within {waited:g} s; it ends CANCELLED when that replica (or one that takes the task"
                " over) acts on it",
                reason="CANCEL_PENDING",
            ) from None

    async def cancel_soon(self, task_id: str, why: str) -> bool:
        """Start cancelling a task without waiting for its end (a new task of its concurrency key
        replaces it): a queued one at once, one running here at once, a waiting one by running it
        to its end here, one running elsewhere through a request that replica acts on. Unless it
        was queued, the request is stored first: a replica that takes the run over, should this
        one die before the end is written, acts on it before anything of the run goes on. False
        when the task had ended (or its run had written its end) before the request was stored."""
        if await self.cancel_queued(task_id, why) is not None:
            return True
        if not await self.queue.request_cancel(task_id, why):
            return False
        if await self.dispatcher.cancel(task_id, why, wait=False):
            return True
        task = await self.tasks.get_task(task_id)
        if task is not None and task.status == task_pb2.TASK_STATUS_WAITING:
            claimed = await self.queue.claim_waiting(task_id, self.replica_id, self.lease_seconds)
            if claimed is not None:
                self.dispatcher.adopt(*claimed, cancel_reason=why)
        return True

    async def cancel_queued(self, task_id: str, why: str) -> task_pb2.Task | None:
        """Cancel a task still queued, at once; the task as it ended, or None if it left the queue."""
        return await cancel_queued(self.queue, self.listeners, task_id, why)

    async def _cancelled(self, task: task_pb2.Task, why: str, principal: Principal) -> bool:
        """Cancel the task as its state allows; True once it is cancelled (or will be, here), False
        when its state changed meanwhile (look again)."""
        task_id = task.task_id
        if await self.cancel_queued(task_id, why) is not None:
            return True
        if await self.dispatcher.cancel(task_id, why):
            return True
        if task.status == task_pb2.TASK_STATUS_WAITING:
            # Nobody runs it: lease it here and run it just long enough to end it CANCELLED.
            claimed = await self.queue.claim_waiting(task_id, self.replica_id, self.lease_seconds)
            if claimed is None:
                return False
            run = self.dispatcher.adopt(*claimed, cancel_reason=why)
            await asyncio.wait([run])  # not `await run`: a caller that goes away must not cancel the run
            return True
        # It runs on another replica: leave a request there; that replica is told of it at once.
        await self.queue.request_cancel(task_id, why)
        while (latest := await visible_task(self.tasks, task_id, principal)).status not in TERMINAL:
            if latest.status == task_pb2.TASK_STATUS_WAITING:
                return False  # it parked meanwhile: cancel it as a waiting task
            await self.tasks.wait_events(task_id, latest.last_sequence, timeout=0.5)
        return True
