"""What a client does to every task a filter selects: rerun the finished ones once each (after an
outage of a provider, or once a fixed version of a workflow is applied, the tasks that failed run
again from where they failed), or cancel the unfinished ones (a runaway batch), without naming
them one by one. Each pages through ListTasks and makes one call per task, as any client of the
protos can."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import grpc

from mcp_sdk.errors import McpError
from mcp_sdk.proto import task_pb2
from mcp_sdk.task_methods import UNSET, TaskMethods, _Unset
from mcp_sdk.values import JsonValue, python_to_value

OutcomeT = TypeVar("OutcomeT")  # what became of one task

# Refusals that concern one task (deleted meanwhile, a version that lacks one of its kept steps,
# a path it does not have, not finished after all): the pass reports them and goes on. Any other
# failure (the server unreachable, a submission limit not waited out) ends the pass.
PER_TASK_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
    }
)


@dataclass(frozen=True)
class RerunOutcome:
    """What became of one selected task: its rerun (`created` False when an earlier pass with the
    same request had started it), or the server's refusal."""

    task_id: str
    rerun: task_pb2.Task | None = None
    created: bool = False
    error: McpError | None = None


def bulk_request_id(task_id: str, from_step_path: str, input: JsonValue | _Unset, version: int) -> str:
    """The request id of one task's rerun in a bulk pass: the same task and request always give the
    same id, so a second pass (or a caller that died halfway and starts again) starts no second
    rerun of a task, and a different request (another step, input or version) is a new one."""
    request = {"from": from_step_path, "version": version}
    if not isinstance(input, _Unset):
        request["input"] = python_to_value(input).SerializeToString(deterministic=True).hex()
    digest = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()[:16]
    return f"rerun:{task_id}:{digest}"


@dataclass(frozen=True)
class CancelOutcome:
    """What became of one selected task: cancelled (`task`, as CancelTask answered it), finished
    before the cancel reached it (`finished`), or what the server said instead (`error`: NOT_FOUND
    for a task deleted meanwhile, DEADLINE_EXCEEDED `CANCEL_PENDING` for one whose replica has not
    acted on the request yet: it ends CANCELLED when it does)."""

    task_id: str
    task: task_pb2.Task | None = None
    finished: bool = False
    error: McpError | None = None


UNFINISHED = (task_pb2.TASK_STATUS_PENDING, task_pb2.TASK_STATUS_RUNNING, task_pb2.TASK_STATUS_WAITING)


class BulkMethods(TaskMethods):
    """`rerun_tasks` and `cancel_tasks`: RerunTask or CancelTask for every task a ListTasks filter selects."""

    async def rerun_tasks(
        self,
        *,
        statuses: Sequence[task_pb2.TaskStatus | str] = (task_pb2.TASK_STATUS_FAILED,),
        workflow_id: str = "",
        labels: Mapping[str, str] | None = None,
        from_step_path: str = "",
        input: JsonValue | _Unset = UNSET,
        version: int = 0,
        limit: int = 0,
        concurrency: int = 8,
        page_size: int = 500,
    ) -> AsyncGenerator[RerunOutcome, None]:
        """Rerun each finished task with one of `statuses` (failed, by default; of `workflow_id`,
        carrying every one of `labels`), newest first, as `rerun` would with the same step, input
        and version (an empty step: a failed task from where it failed), `concurrency` at a time;
        yields what became of each. `limit` > 0 stops after that many new reruns; `page_size` is
        the listing's page.

        Each task's rerun has a request id made from its id and the request (`bulk_request_id`):
        a task a pass has rerun already answers `created` False with that rerun, so the same call
        again (say after this process died halfway) reruns only the tasks it had not reached. A
        rerun that fails again is a failed task of its own, which the next pass reruns; none this
        pass starts is selected by it (the listing pages from the newest on, and they are newer).
        Refusals about one task (a version that lacks one of its kept steps: INVALID_ARGUMENT;
        deleted meanwhile: NOT_FOUND) are yielded and the pass goes on; any other McpError (the
        server unreachable) is raised."""
        async for outcome in self._over_selected(
            lambda task_id: self._rerun_once(task_id, from_step_path, input, version),
            lambda outcome: outcome.created,
            statuses,
            workflow_id,
            labels,
            limit,
            concurrency,
            page_size,
        ):
            yield outcome

    async def _rerun_once(
        self, task_id: str, from_step_path: str, input: JsonValue | _Unset, version: int
    ) -> RerunOutcome:
        request = task_pb2.RerunTaskRequest(
            task_id=task_id,
            from_step_path=from_step_path,
            workflow_version=version,
            request_id=bulk_request_id(task_id, from_step_path, input, version),
        )
        if not isinstance(input, _Unset):
            request.input.CopyFrom(python_to_value(input))
        try:
            reply: task_pb2.SubmitTaskResponse = await self._submission(self.tasks.RerunTask, request)
        except McpError as error:
            if error.code not in PER_TASK_CODES:
                raise
            return RerunOutcome(task_id, error=error)
        return RerunOutcome(task_id, reply.task, reply.created)

    async def cancel_tasks(
        self,
        *,
        statuses: Sequence[task_pb2.TaskStatus | str] = UNFINISHED,
        workflow_id: str = "",
        labels: Mapping[str, str] | None = None,
        reason: str = "",
        limit: int = 0,
        concurrency: int = 8,
        page_size: int = 500,
    ) -> AsyncGenerator[CancelOutcome, None]:
        """Cancel each task with one of `statuses` (pending, running or waiting, by default; of
        `workflow_id`, carrying every one of `labels`), newest first, `concurrency` at a time, with
        `reason`; yields what became of each. `limit` > 0 stops after that many. A task that
        finished before its cancel reached it is yielded with `finished` (nothing changed); one
        deleted meanwhile with its NOT_FOUND, one whose replica has not acted in time with its
        CANCEL_PENDING (the request stands); any other McpError is raised. Cancelling is
        idempotent, so the same call again (say after this process died halfway) cancels what is
        left. Tasks submitted while it runs are not selected once the listing has passed them."""
        async for outcome in self._over_selected(
            lambda task_id: self._cancel_once(task_id, reason),
            lambda _: True,
            statuses,
            workflow_id,
            labels,
            limit,
            concurrency,
            page_size,
        ):
            yield outcome

    async def _cancel_once(self, task_id: str, reason: str) -> CancelOutcome:
        try:
            return CancelOutcome(task_id, await self.cancel(task_id, reason))
        except McpError as error:
            if error.reason == "TASK_FINISHED":
                return CancelOutcome(task_id, finished=True)
            if error.code != grpc.StatusCode.NOT_FOUND and error.reason != "CANCEL_PENDING":
                raise
            return CancelOutcome(task_id, error=error)

    async def _over_selected(
        self,
        act: Callable[[str], Awaitable[OutcomeT]],
        counted: Callable[[OutcomeT], bool],
        statuses: Sequence[task_pb2.TaskStatus | str],
        workflow_id: str,
        labels: Mapping[str, str] | None,
        limit: int,
        concurrency: int,
        page_size: int,
    ) -> AsyncGenerator[OutcomeT, None]:
        """`act` on each task the filter selects, newest first, `concurrency` at a time, yielding
        each outcome; stops once `limit` (> 0) outcomes are `counted`."""
        count = 0
        token = ""
        width = max(concurrency, 1)
        while True:
            page = await self.list_tasks(
                statuses=statuses, workflow_id=workflow_id, labels=labels, page_size=page_size, page_token=token
            )
            selected = [task.task_id for task in page.tasks]
            for first in range(0, len(selected), width):
                batch = selected[first : first + width]
                if limit:
                    batch = batch[: limit - count]
                if not batch:
                    return
                for outcome in await asyncio.gather(*(act(task_id) for task_id in batch)):
                    count += counted(outcome)
                    yield outcome
            token = page.next_page_token
            if not token or (limit and count >= limit):
                return
