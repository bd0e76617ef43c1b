"""Deleting a finished task, with everything stored of it."""

from __future__ import annotations

import logging
from collections.abc import Callable

from mcp_sdk.proto import task_pb2
from mcp_server.auth import ANONYMOUS_ADMIN, Principal
from mcp_server.engine.ports import Deletion, StepCache, TaskStore
from mcp_server.errors import FailedPrecondition, NotFound, task_not_found
from mcp_server.service.access import visible_task
from mcp_server.state.common import TERMINAL

log = logging.getLogger(__name__)


class Deleting:
    def __init__(
        self, tasks: TaskStore, step_cache: StepCache | None = None, on_deleted: Callable[[], object] | None = None
    ) -> None:
        self.tasks = tasks
        self.step_cache = step_cache
        self.on_deleted = on_deleted  # told of each task deleted here

    async def delete_task(
        self, task_id: str, principal: Principal = ANONYMOUS_ADMIN, allow_missing: bool = False
    ) -> bool:
        """Delete a finished task the principal may see, and the outputs its steps stored in the
        step cache (first: a delete that fails after that is asked again, and finds the task);
        False when there was none and `allow_missing` (else NOT_FOUND). A task not finished is
        refused and keeps everything."""
        try:
            task = await visible_task(self.tasks, task_id, principal)
            if task.status in TERMINAL and self.step_cache is not None:
                await self.step_cache.remove_outputs_of(task_id)
            done = await self.tasks.delete_finished(task_id)
            if done is Deletion.MISSING:  # deleted or purged meanwhile
                raise task_not_found(task_id)
        except NotFound:
            if allow_missing:
                return False
            raise
        if done is Deletion.NOT_FINISHED:
            status = task_pb2.TaskStatus.Name(task.status).removeprefix("TASK_STATUS_").lower()
            raise FailedPrecondition(
                f"task {task_id} is {status}: only a finished task is deleted; cancel it first, and "
                "delete it once it has ended",
                reason="TASK_NOT_FINISHED",
                metadata={"task_id": task_id},
            )
        log.info("task %s deleted by %s", task_id, principal.name or "an anonymous admin")
        if self.on_deleted is not None:
            self.on_deleted()
        return True
