"""The client's task methods: submit, read, list, cancel, delete, watch and wait for tasks."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from typing import Any

import grpc
from google.protobuf import struct_pb2
from google.protobuf.message import Message

from mcp_sdk.connection import RESUMABLE_CODES, Backoff, Connection
from mcp_sdk.cursor import TERMINAL_STATUSES, Cursor
from mcp_sdk.definitions import submit_request
from mcp_sdk.errors import McpError, task_error
from mcp_sdk.proto import task_pb2
from mcp_sdk.values import JsonValue, python_to_value, value_to_python


class _Unset:
    """The type of UNSET: no value given (None is a value: JSON null)."""


UNSET = _Unset()


def set_times(message: Message, **moments: dt.datetime | None) -> None:
    """Set each Timestamp field of `message` named by a keyword to its aware datetime (None: unset)."""
    for field, moment in moments.items():
        if moment is not None:
            getattr(message, field).FromDatetime(moment.astimezone(dt.UTC).replace(tzinfo=None))


class TaskMethods(Connection):
    """Tasks: submitted (idempotent by request id), read, listed, cancelled, deleted, followed to their end."""

    async def submit(
        self,
        workflow_id: str,
        input: Mapping[str, JsonValue] | None = None,
        *,
        request_id: str | None = None,
        priority: int = 0,
        labels: Mapping[str, str] | None = None,
        version: int = 0,
        queue_timeout: float | None = None,
    ) -> task_pb2.Task:
        """Submit a task; returns it as stored (PENDING, or further along already).

        `request_id` makes the submission idempotent for this principal: the same id returns the
        first task. When none is given one is generated, so that gRPC's retries never submit twice.
        `queue_timeout` (seconds): a task not started by then ends CANCELLED (`QUEUE_TIMEOUT:`) and
        never runs; None: the workflow's `defaults.queue_timeout`, if any.
        A refusal past a submission rate limit is waited out for up to `rate_limited_wait`."""
        request = submit_request(workflow_id, input, request_id, priority, labels, version, queue_timeout)
        reply: task_pb2.SubmitTaskResponse = await self._submission(self.tasks.SubmitTask, request)
        return reply.task

    async def get(self, task_id: str, *, steps: bool = True) -> task_pb2.Task:
        """A task; with `steps`, its step states (as many as fit: see `steps()` for all of them)."""
        view = task_pb2.TASK_VIEW_FULL if steps else task_pb2.TASK_VIEW_BASIC
        reply: task_pb2.GetTaskResponse = await self._call(
            self.tasks.GetTask, task_pb2.GetTaskRequest(task_id=task_id, view=view)
        )
        return reply.task

    async def steps(self, task_id: str) -> AsyncIterator[task_pb2.StepState]:
        """Every step state of a task, page by page."""
        async for reply in self._pages(
            self.tasks.ListTaskSteps, task_pb2.ListTaskStepsRequest(task_id=task_id, page_size=1000)
        ):
            for step in reply.steps:
                yield step

    async def list_tasks(
        self,
        *,
        statuses: Sequence[task_pb2.TaskStatus | str] = (),
        workflow_id: str = "",
        labels: Mapping[str, str] | None = None,
        page_size: int = 100,
        page_token: str = "",
        created_after: dt.datetime | None = None,
        created_before: dt.datetime | None = None,
    ) -> task_pb2.ListTasksResponse:
        """One page of tasks, newest first; pass `next_page_token` back for the next. `labels`:
        only the tasks that carry every one of them; `created_after` / `created_before` (aware
        datetimes): only the tasks created at or after, before."""
        request = task_pb2.ListTasksRequest(
            statuses=list(statuses),
            workflow_id=workflow_id,
            labels=dict(labels or {}),
            page_size=page_size,
            page_token=page_token,
        )
        set_times(request, created_after=created_after, created_before=created_before)
        reply: task_pb2.ListTasksResponse = await self._call(self.tasks.ListTasks, request)
        return reply

    async def cancel(self, task_id: str, reason: str = "") -> task_pb2.Task:
        """Cancel a task; cancelling one that has ended changes nothing and returns it. A task whose
        workflow cleans up on a cancel (a recover node with `on_cancel`) runs that clean-up first:
        the call answers once the task has ended CANCELLED (`task.cancel_request` says when)."""
        reply: task_pb2.CancelTaskResponse = await self._call(
            self.tasks.CancelTask, task_pb2.CancelTaskRequest(task_id=task_id, reason=reason)
        )
        return reply.task

    async def delete(self, task_id: str, *, allow_missing: bool = False) -> bool:
        """Delete a finished task with everything stored of it; True when this call deleted it.
        A task not finished raises FAILED_PRECONDITION (cancel it first); one that does not exist
        raises NOT_FOUND, or returns False with `allow_missing`."""
        reply: task_pb2.DeleteTaskResponse = await self._call(
            self.tasks.DeleteTask, task_pb2.DeleteTaskRequest(task_id=task_id, allow_missing=allow_missing)
        )
        return reply.deleted

    async def signal(
        self,
        task_id: str,
        signal: str,
        payload: JsonValue = None,
        *,
        step_path: str = "",
        request_id: str | None = None,
    ) -> task_pb2.SignalTaskResponse:
        """Send `signal` with `payload` to a task, for a wait node of that name: the step that has
        waited longest for it takes it (or only `step_path`), else it is kept for the next wait.
        The response says which step took it (empty: kept) and the SIGNAL_RECEIVED event's
        sequence. `request_id` makes it idempotent (one is generated when none is given, so that
        gRPC's retries deliver it once); a repeat answers as the first did. Raises McpError:
        INVALID_ARGUMENT for a name no wait declares or a payload its schema rejects (with a
        violation per failing path), FAILED_PRECONDITION for a finished task or a step that does
        not wait for it, NOT_FOUND for a task this principal cannot see."""
        request = task_pb2.SignalTaskRequest(
            task_id=task_id, signal=signal, step_path=step_path, request_id=request_id or uuid.uuid4().hex
        )
        request.payload.CopyFrom(python_to_value(payload))
        reply: task_pb2.SignalTaskResponse = await self._call(self.tasks.SignalTask, request)
        return reply

    async def rerun(
        self,
        task_id: str,
        from_step_path: str = "",
        *,
        input: JsonValue | _Unset = UNSET,
        version: int = 0,
        request_id: str | None = None,
    ) -> task_pb2.Task:
        """Start a new task from a finished one: the steps that completed before `from_step_path`
        are kept (marked `reused`, not called again), the rest runs afresh. `input` (needs
        `from_step_path`) is what that step receives instead of what came before; `version` runs
        the rerun on another version of the workflow (a fixed definition). An empty path reruns a
        failed or cancelled task from its first step that did not complete, a completed one from
        the start. Through recover nodes (docs/reruns.md): what a clean-up undid is not kept, a
        path inside a handler runs that handler again on the same error, and inside the clean-up
        of a cancel the rerun runs that clean-up again and ends CANCELLED. `request_id` makes it
        idempotent (one is generated when none is given, so that gRPC's retries start one rerun; a
        refusal past a submission rate limit is waited out for up to `rate_limited_wait`). Raises
        McpError: FAILED_PRECONDITION for a task not yet finished (or a clean-up's path on a
        version that does not clean up there), INVALID_ARGUMENT for a path not in the task or a
        version that lacks a kept step (the violation names it), NOT_FOUND for a task this
        principal cannot see."""
        request = task_pb2.RerunTaskRequest(
            task_id=task_id,
            from_step_path=from_step_path,
            workflow_version=version,
            request_id=request_id or uuid.uuid4().hex,
        )
        if not isinstance(input, _Unset):
            request.input.CopyFrom(python_to_value(input))
        reply: task_pb2.SubmitTaskResponse = await self._submission(self.tasks.RerunTask, request)
        return reply.task

    async def read_value(
        self,
        task_id: str,
        step_path: str = "",
        field: task_pb2.ValueField = task_pb2.VALUE_FIELD_OUTPUT,
        *,
        max_bytes: int | None = None,
    ) -> JsonValue:
        """A value too large to travel inline (a ValueRef's): a step's output or input, or with no
        step path the task's result or input. Checked against its SHA-256. With `max_bytes`, a
        larger value is not read: McpError OUT_OF_RANGE (reason VALUE_TOO_LARGE, its size in
        metadata["size_bytes"])."""
        request = task_pb2.ReadValueRequest(task_id=task_id, step_path=step_path, field=field)
        data = bytearray()
        sha256 = ""
        call: Any = self.tasks.ReadValue(request, metadata=self._metadata, timeout=self.timeout)
        try:
            async for chunk in call:
                if max_bytes is not None and chunk.size_bytes > max_bytes:
                    raise McpError(
                        grpc.StatusCode.OUT_OF_RANGE,
                        f"the value is {chunk.size_bytes} bytes, above the {max_bytes} asked for",
                        reason="VALUE_TOO_LARGE",
                        metadata={"size_bytes": str(chunk.size_bytes)},
                    )
                data += chunk.data
                sha256 = chunk.sha256
        except grpc.aio.AioRpcError as exc:
            raise McpError.from_rpc_error(exc) from None
        finally:
            call.cancel()
        if sha256 and hashlib.sha256(data).hexdigest() != sha256:
            raise McpError(
                grpc.StatusCode.DATA_LOSS,
                f"value of {task_id}/{step_path or '(task)'} does not match its SHA-256",
                reason="CHECKSUM_MISMATCH",
            )
        return value_to_python(struct_pb2.Value.FromString(bytes(data)))

    async def watch(self, task_id: str, after: int = 0) -> AsyncGenerator[task_pb2.TaskEvent, None]:
        """Every event of the task after sequence `after`, in order, each once, until the terminal
        one (COMPLETED, FAILED or CANCELLED).

        A cut connection or a restarting server is waited out (reconnecting with backoff for up to
        `watch_give_up_after` seconds of failing in a row) and the watch resumes after the last event
        delivered. A refusal (NOT_FOUND, PERMISSION_DENIED, INVALID_ARGUMENT...) raises at once."""
        backoff = Backoff(give_up_after=self.watch_give_up_after)
        cursor = Cursor(after, backoff)
        batched = True
        while True:
            request = task_pb2.WatchTaskRequest(task_id=task_id, after_sequence=cursor.last)
            call: Any = (self.tasks.WatchTaskEvents if batched else self.tasks.WatchTask)(
                request, metadata=self._metadata
            )
            try:
                async for message in call:
                    for event in cursor.fresh(message.events if batched else (message,)):
                        yield event
                    if cursor.ended:
                        return
                # The server ends a watch cleanly only when the task has ended and nothing is left.
                return
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNIMPLEMENTED and batched:
                    batched = False  # a server without the batched watch
                    continue
                if exc.code() not in RESUMABLE_CODES or backoff.exhausted():
                    raise McpError.from_rpc_error(exc) from None
            finally:
                call.cancel()
            await backoff.sleep()

    async def submit_and_watch(
        self,
        workflow_id: str,
        input: Mapping[str, JsonValue] | None = None,
        *,
        request_id: str | None = None,
        priority: int = 0,
        labels: Mapping[str, str] | None = None,
        version: int = 0,
        queue_timeout: float | None = None,
    ) -> AsyncGenerator[task_pb2.TaskEvent, None]:
        """Submit a task and yield its events from the first (QUEUED, which names the task in
        `task_id`) to the terminal one, each once, in one SubmitAndWatchTask stream (options as
        `submit`). A cut connection or a restarting server is waited out as `watch` does: once the
        task is known the watch goes on after the last event delivered, before that the same
        request id is asked again, which streams the same task (after a refusal past a submission
        rate limit, when its retry time comes, as `run` does). On a server without
        SubmitAndWatchTask: `submit`, then `watch`."""
        request = submit_request(workflow_id, input, request_id, priority, labels, version, queue_timeout)
        backoff = Backoff(give_up_after=self.watch_give_up_after)
        cursor = Cursor(0, backoff)
        task_id = ""
        while not task_id:
            call: Any = self.tasks.SubmitAndWatchTask(request, metadata=self._metadata)
            retry_after: float | None = None
            try:
                async for reply in call:
                    if reply.HasField("submitted"):
                        task_id = reply.submitted.task.task_id
                    for event in cursor.fresh(reply.events):
                        yield event
                    if cursor.ended:
                        return
                if task_id:  # ended cleanly: the task ended and nothing is left
                    return
                raise McpError(grpc.StatusCode.INTERNAL, "the server ended SubmitAndWatchTask without naming the task")
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                    task_id = (await self._call(self.tasks.SubmitTask, request)).task.task_id
                    break
                retry_after = _resumable(exc, backoff, task_id == "")
            finally:
                call.cancel()
            if not task_id:
                await backoff.sleep(retry_after)
        async for event in self.watch(task_id, after=cursor.last):
            yield event

    async def result(self, task_id: str, timeout: float | None = None) -> JsonValue:
        """Wait for the task to end; return its result as plain values, or raise TaskFailed (with the
        task's error code and message) or TaskCancelled. `timeout` (seconds) raises TimeoutError."""
        async with asyncio.timeout(timeout):
            task = await self.get(task_id, steps=False)
            while task.status not in TERMINAL_STATUSES:
                async for _ in self.watch(task_id, after=task.last_sequence):
                    pass
                task = await self.get(task_id, steps=False)
            return await self._outcome(task)

    async def _outcome(self, task: task_pb2.Task) -> JsonValue:
        """A finished task's result, or its error raised."""
        if task.status != task_pb2.TASK_STATUS_COMPLETED:
            raise task_error(task)
        if task.HasField("result_ref"):
            return await self.read_value(task.task_id)
        return value_to_python(task.result)

    async def run(
        self,
        workflow_id: str,
        input: Mapping[str, JsonValue] | None = None,
        *,
        timeout: float | None = None,
        request_id: str | None = None,
        priority: int = 0,
        labels: Mapping[str, str] | None = None,
        version: int = 0,
        queue_timeout: float | None = None,
    ) -> JsonValue:
        """Submit a task and wait for its result, in one RunTask call (options as `submit`; raises
        as `result`). A cut connection or a restarting server is waited out as `watch` does, by
        asking again with the same request id, which waits for the same task; so is a refusal past
        a submission rate limit, asked again when its retry time comes (raised at once when that
        is past `watch_give_up_after`). On a server without RunTask: `submit`, then `result`."""
        request = submit_request(workflow_id, input, request_id, priority, labels, version, queue_timeout)
        backoff = Backoff(give_up_after=self.watch_give_up_after)
        async with asyncio.timeout(timeout):
            while True:
                try:
                    reply: task_pb2.SubmitTaskResponse = await self.tasks.RunTask(request, metadata=self._metadata)
                    break
                except grpc.aio.AioRpcError as exc:
                    if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                        submitted: task_pb2.SubmitTaskResponse = await self._call(self.tasks.SubmitTask, request)
                        return await self.result(submitted.task.task_id)
                    retry_after = _resumable(exc, backoff, True)
                await backoff.sleep(retry_after)
            return await self._outcome(reply.task)


def _resumable(exc: grpc.aio.AioRpcError, backoff: Backoff, submitting: bool) -> float | None:
    """How long to wait before asking again after `exc` (None: the backoff's next step); raises it
    as McpError when it is a refusal, when failures have gone on past the budget, or when a
    submission's refusal past a rate limit names a retry time beyond that budget, or none (a
    limit that can never grant one submission)."""
    if exc.code() not in RESUMABLE_CODES or backoff.exhausted():
        raise McpError.from_rpc_error(exc) from None
    if not (submitting and exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED):
        return None
    refused = McpError.from_rpc_error(exc)
    if refused.reason == "RATE_LIMITED" and (refused.retry_after is None or not backoff.can_wait(refused.retry_after)):
        raise refused from None
    return refused.retry_after
