"""Reading tasks: one task, lists of tasks, a task's steps, one of its values."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Mapping, Sequence

from mcp_sdk.proto import task_pb2
from mcp_server.auth import ANONYMOUS_ADMIN, Principal
from mcp_server.engine.ports import TaskFilter, TaskStore
from mcp_server.service.access import check_statuses, page_size, visible_task
from mcp_server.settings import Limits
from mcp_server.state.common import TERMINAL
from mcp_server.task_views import TaskViews, chunks, steps_start, steps_token

RERUNS_SHOWN = 100


class TaskReads:
    """Tasks as responses (see task_views.py), for the principals that may see them."""

    def __init__(self, tasks: TaskStore, views: TaskViews, limits: Limits) -> None:
        self.tasks = tasks
        self.views = views
        self.limits = limits

    async def get_task(
        self, task_id: str, principal: Principal = ANONYMOUS_ADMIN, view: int = task_pb2.TASK_VIEW_FULL
    ) -> task_pb2.Task:
        """The task, if `principal` may see it: its owner, or an admin. Another principal's task
        answers NOT_FOUND, exactly like a task that does not exist. FULL carries the step states
        that fit in one response; BASIC none."""
        header = await visible_task(self.tasks, task_id, principal)
        if view == task_pb2.TASK_VIEW_BASIC:
            return self.views.basic(header)
        if header.status in TERMINAL:  # only a finished task is rerun
            header.reruns.extend(await self.tasks.reruns_of(task_id, RERUNS_SHOWN))
        return await self.views.full(header)

    async def list_tasks(
        self,
        size: int,
        page_token: str,
        statuses: Sequence[int],
        workflow_id: str,
        principal: Principal = ANONYMOUS_ADMIN,
        view: int = task_pb2.TASK_VIEW_BASIC,
        owner: str = "",
        labels: Mapping[str, str] | None = None,
        created: tuple[int, int] = (0, 0),
    ) -> tuple[list[task_pb2.Task], str, int]:
        """Tasks newest first, as many as fit in one response; an admin may filter by owner,
        anyone else sees only their own; with `labels`, only the tasks that carry all of them;
        `created`: (at or after, before) in Unix microseconds, 0 for no bound."""
        check_statuses(statuses, "statuses")
        if not principal.is_admin:
            if owner and owner != principal.name:
                return [], "", 0  # another principal's tasks do not exist for this caller
            owner = principal.name
        where = TaskFilter(tuple(statuses), workflow_id, owner, tuple(sorted((labels or {}).items())), *created)
        page = await self.tasks.list_tasks(page_size(size, self.limits), page_token, where)
        shown = await self.views.many(page.tasks, with_steps=view == task_pb2.TASK_VIEW_FULL)
        more = page.more or len(shown) < len(page.tasks)
        return shown, page.after[len(shown) - 1] if shown and more else "", page.total

    async def list_task_steps(
        self, task_id: str, size: int, page_token: str, principal: Principal = ANONYMOUS_ADMIN
    ) -> tuple[list[task_pb2.StepState], str, int]:
        """A task's step states in the order they first started, as many as fit in one response."""
        header = await visible_task(self.tasks, task_id, principal)
        start = steps_start(task_id, page_token)
        page = await self.views.steps(task_id, start, page_size(size, self.limits))
        token = steps_token(task_id, page.next_index) if page.next_index is not None else ""
        return page.steps, token, header.step_count

    async def read_value(
        self, task_id: str, step_path: str, field: int, principal: Principal = ANONYMOUS_ADMIN
    ) -> AsyncIterator[task_pb2.ValueChunk]:
        """One value of a task, in chunks (see ReadValue in task.proto)."""
        header = await visible_task(self.tasks, task_id, principal)
        data = await self.views.value_bytes(header, step_path, field)
        async for chunk in chunks(data, hashlib.sha256(data).hexdigest()):
            yield chunk
