"""The client for scripts: the same methods as `Client`, called without `await`.

    with SyncClient("127.0.0.1:50051") as client:
        print(client.run("hello", {"name": "Ada"}))

It runs an async Client on an event loop of its own, in a background thread, so it works the
same from plain scripts, notebooks that already run a loop, and threads.
"""

from __future__ import annotations

import asyncio
import datetime
import threading
from collections.abc import AsyncGenerator, Coroutine, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar

from mcp_sdk.bulk import UNFINISHED, CancelOutcome, RerunOutcome
from mcp_sdk.client import Client, Tls, Upgrade
from mcp_sdk.proto import bulk_pb2, events_pb2, registry_pb2, schedule_pb2, task_pb2, workflow_pb2
from mcp_sdk.task_methods import UNSET, _Unset
from mcp_sdk.values import JsonValue

T = TypeVar("T")


class SyncClient:
    """A blocking client of one orchestrator; see `Client` for what each method does."""

    def __init__(
        self,
        address: str,
        *,
        token: str | None = None,
        tls: Tls | bool | None = None,
        timeout: float = 30.0,
        watch_give_up_after: float | None = 300.0,
        rate_limited_wait: float = 0.0,
        channel_options: list[tuple[str, Any]] | None = None,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="mcp-sdk-client", daemon=True)
        self._thread.start()

        async def make() -> Client:  # the channel belongs to the loop it is made on
            return Client(
                address,
                token=token,
                tls=tls,
                timeout=timeout,
                watch_give_up_after=watch_give_up_after,
                rate_limited_wait=rate_limited_wait,
                channel_options=channel_options,
            )

        self._client = self._run(make())

    def _run(self, work: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(work, self._loop).result()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel and stop the background loop."""
        if self._loop.is_closed():
            return
        self._run(self._client.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def create_workflow(self, definition: workflow_pb2.Workflow | Mapping[str, Any] | str) -> workflow_pb2.Workflow:
        return self._run(self._client.create_workflow(definition))

    def validate_workflow(
        self, definition: workflow_pb2.Workflow | Mapping[str, Any] | str
    ) -> workflow_pb2.ValidateWorkflowResponse:
        return self._run(self._client.validate_workflow(definition))

    def get_workflow(self, workflow_id: str, version: int = 0) -> workflow_pb2.Workflow:
        return self._run(self._client.get_workflow(workflow_id, version))

    def list_workflows(self) -> list[workflow_pb2.Workflow]:
        return self._run(self._client.list_workflows())

    def delete_workflow(self, workflow_id: str) -> workflow_pb2.DeleteWorkflowResponse:
        return self._run(self._client.delete_workflow(workflow_id))

    def upgrade_subworkflows(
        self, workflow_ids: Sequence[str] = (), *, runs: Sequence[str] = (), dry_run: bool = False
    ) -> list[Upgrade]:
        return self._run(self._client.upgrade_subworkflows(workflow_ids, runs=runs, dry_run=dry_run))

    def submit(
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
        return self._run(
            self._client.submit(
                workflow_id,
                input,
                request_id=request_id,
                priority=priority,
                labels=labels,
                version=version,
                queue_timeout=queue_timeout,
            )
        )

    def get(self, task_id: str, *, steps: bool = True) -> task_pb2.Task:
        return self._run(self._client.get(task_id, steps=steps))

    def steps(self, task_id: str) -> list[task_pb2.StepState]:
        async def collect() -> list[task_pb2.StepState]:
            return [step async for step in self._client.steps(task_id)]

        return self._run(collect())

    def list_tasks(
        self,
        *,
        statuses: Sequence[task_pb2.TaskStatus | str] = (),
        workflow_id: str = "",
        labels: Mapping[str, str] | None = None,
        page_size: int = 100,
        page_token: str = "",
        created_after: datetime.datetime | None = None,
        created_before: datetime.datetime | None = None,
    ) -> task_pb2.ListTasksResponse:
        return self._run(
            self._client.list_tasks(
                created_after=created_after,
                created_before=created_before,
                statuses=statuses,
                workflow_id=workflow_id,
                labels=labels,
                page_size=page_size,
                page_token=page_token,
            )
        )

    def cancel(self, task_id: str, reason: str = "") -> task_pb2.Task:
        return self._run(self._client.cancel(task_id, reason))

    def delete(self, task_id: str, *, allow_missing: bool = False) -> bool:
        return self._run(self._client.delete(task_id, allow_missing=allow_missing))

    def signal(
        self,
        task_id: str,
        signal: str,
        payload: JsonValue = None,
        *,
        step_path: str = "",
        request_id: str | None = None,
    ) -> task_pb2.SignalTaskResponse:
        """See Client.signal."""
        return self._run(self._client.signal(task_id, signal, payload, step_path=step_path, request_id=request_id))

    def rerun(
        self,
        task_id: str,
        from_step_path: str = "",
        *,
        input: JsonValue | _Unset = UNSET,
        version: int = 0,
        request_id: str | None = None,
    ) -> task_pb2.Task:
        """See Client.rerun."""
        return self._run(
            self._client.rerun(task_id, from_step_path, input=input, version=version, request_id=request_id)
        )

    def rerun_tasks(
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
    ) -> Iterator[RerunOutcome]:
        """See Client.rerun_tasks: what became of each selected task, as it happens."""
        return self._iterate(
            self._client.rerun_tasks(
                statuses=statuses,
                workflow_id=workflow_id,
                labels=labels,
                from_step_path=from_step_path,
                input=input,
                version=version,
                limit=limit,
                concurrency=concurrency,
                page_size=page_size,
            )
        )

    def cancel_tasks(
        self,
        *,
        statuses: Sequence[task_pb2.TaskStatus | str] = UNFINISHED,
        workflow_id: str = "",
        labels: Mapping[str, str] | None = None,
        reason: str = "",
        limit: int = 0,
        concurrency: int = 8,
        page_size: int = 500,
    ) -> Iterator[CancelOutcome]:
        """See Client.cancel_tasks: what became of each selected task, as it happens."""
        return self._iterate(
            self._client.cancel_tasks(
                statuses=statuses,
                workflow_id=workflow_id,
                labels=labels,
                reason=reason,
                limit=limit,
                concurrency=concurrency,
                page_size=page_size,
            )
        )

    def read_value(
        self,
        task_id: str,
        step_path: str = "",
        field: task_pb2.ValueField = task_pb2.VALUE_FIELD_OUTPUT,
        *,
        max_bytes: int | None = None,
    ) -> JsonValue:
        return self._run(self._client.read_value(task_id, step_path, field, max_bytes=max_bytes))

    def watch(self, task_id: str, after: int = 0) -> Iterator[task_pb2.TaskEvent]:
        """The events of `Client.watch`, as a plain iterator (close it to stop watching early)."""
        return self._iterate(self._client.watch(task_id, after))

    def submit_and_watch(
        self, workflow_id: str, input: Mapping[str, JsonValue] | None = None, **submit_options: Any
    ) -> Iterator[task_pb2.TaskEvent]:
        """The events of `Client.submit_and_watch`, as a plain iterator."""
        return self._iterate(self._client.submit_and_watch(workflow_id, input, **submit_options))

    def _iterate(self, events: AsyncGenerator[T, None]) -> Iterator[T]:
        async def next_event() -> T:
            return await anext(events)

        try:
            while True:
                try:
                    yield self._run(next_event())
                except StopAsyncIteration:
                    return
        finally:
            if not self._loop.is_closed():
                self._run(events.aclose())

    def result(self, task_id: str, timeout: float | None = None) -> JsonValue:
        return self._run(self._client.result(task_id, timeout))

    def run(
        self,
        workflow_id: str,
        input: Mapping[str, JsonValue] | None = None,
        *,
        timeout: float | None = None,
        **submit_options: Any,
    ) -> JsonValue:
        return self._run(self._client.run(workflow_id, input, timeout=timeout, **submit_options))

    def list_protocols(self) -> list[registry_pb2.RegisteredProtocol]:
        return self._run(self._client.list_protocols())

    def register_protocols(self, address: str, ttl: float = 0) -> list[registry_pb2.RegisteredProtocol]:
        return self._run(self._client.register_protocols(address, ttl))

    def put_rate_limit(self, key: str, limit: float, period: float, burst: float = 0) -> registry_pb2.RateLimit:
        """See Client.put_rate_limit."""
        return self._run(self._client.put_rate_limit(key, limit, period, burst))

    def list_rate_limits(self) -> list[registry_pb2.RateLimit]:
        return self._run(self._client.list_rate_limits())

    def get_rate_limit(self, key: str) -> registry_pb2.RateLimit:
        """See Client.get_rate_limit."""
        return self._run(self._client.get_rate_limit(key))

    def delete_rate_limit(self, key: str) -> None:
        self._run(self._client.delete_rate_limit(key))

    def create_schedule(
        self, schedule_id: str, workflow_id: str, input: Mapping[str, JsonValue] | None = None, **options: Any
    ) -> schedule_pb2.Schedule:
        """See Client.create_schedule."""
        return self._run(self._client.create_schedule(schedule_id, workflow_id, input, **options))

    def get_schedule(self, schedule_id: str) -> schedule_pb2.Schedule:
        return self._run(self._client.get_schedule(schedule_id))

    def list_schedules(self) -> list[schedule_pb2.Schedule]:
        return self._run(self._client.list_schedules())

    def pause_schedule(self, schedule_id: str, note: str = "") -> schedule_pb2.Schedule:
        return self._run(self._client.pause_schedule(schedule_id, note))

    def unpause_schedule(self, schedule_id: str, note: str = "") -> schedule_pb2.Schedule:
        return self._run(self._client.unpause_schedule(schedule_id, note))

    def delete_schedule(self, schedule_id: str) -> None:
        self._run(self._client.delete_schedule(schedule_id))

    def trigger_schedule(self, schedule_id: str) -> task_pb2.Task:
        return self._run(self._client.trigger_schedule(schedule_id))

    def backfill_schedule(
        self, schedule_id: str, start: datetime.datetime, end: datetime.datetime, overlap: str = "allow_all"
    ) -> int:
        return self._run(self._client.backfill_schedule(schedule_id, start, end, overlap))

    def publish_event(
        self, name: str, data: Mapping[str, JsonValue] | None = None, **options: Any
    ) -> events_pb2.PublishEventResponse:
        """See Client.publish_event."""
        return self._run(self._client.publish_event(name, data, **options))

    def start_bulk_action(self, kind: str, selection: bulk_pb2.TaskSelection, **options: Any) -> bulk_pb2.BulkAction:
        """See Client.start_bulk_action (and task_selection for `selection`)."""
        return self._run(self._client.start_bulk_action(kind, selection, **options))

    def get_bulk_action(self, action_id: str) -> bulk_pb2.BulkAction:
        return self._run(self._client.get_bulk_action(action_id))

    def list_bulk_actions(self, page_size: int = 100, page_token: str = "") -> bulk_pb2.ListBulkActionsResponse:
        return self._run(self._client.list_bulk_actions(page_size, page_token))

    def abort_bulk_action(self, action_id: str, reason: str = "") -> bulk_pb2.BulkAction:
        return self._run(self._client.abort_bulk_action(action_id, reason))

    def wait_bulk_action(self, action_id: str, timeout: float | None = None) -> bulk_pb2.BulkAction:
        return self._run(self._client.wait_bulk_action(action_id, timeout))
