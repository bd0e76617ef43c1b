"""An async client of the orchestrator: workflows in, tasks out, events followed to the end.

    async with Client("127.0.0.1:50051", token="...") as client:
        await client.create_workflow(open("hello.yaml").read())
        task = await client.submit("hello", {"name": "Ada"})
        async for event in client.watch(task.task_id):
            print(event.sequence, TaskEventType.Name(event.type), event.step_path)
        print(await client.result(task.task_id))

Every failed call raises `McpError` (code, ErrorInfo reason, field violations). `watch` survives
dropped connections and server restarts: it reconnects with backoff and resumes after the last
sequence it delivered, so each event arrives once and in order. `result` returns the task's result
as plain Python values, or raises TaskFailed / TaskCancelled. Unary calls that are safe to repeat
are retried by gRPC on UNAVAILABLE; `submit` is made safe by a request id (one is generated when
none is given).
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import random
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import grpc
from google.protobuf import json_format, struct_pb2

from mcp_sdk.errors import FieldViolation, McpError, task_error
from mcp_sdk.proto import registry_pb2, registry_pb2_grpc, task_pb2, task_pb2_grpc, workflow_pb2, workflow_pb2_grpc
from mcp_sdk.values import JsonValue, sendable_struct, strict_json, value_to_python

TERMINAL_EVENTS = frozenset(
    {task_pb2.TASK_EVENT_TYPE_COMPLETED, task_pb2.TASK_EVENT_TYPE_FAILED, task_pb2.TASK_EVENT_TYPE_CANCELLED}
)
TERMINAL_STATUSES = frozenset(
    {task_pb2.TASK_STATUS_COMPLETED, task_pb2.TASK_STATUS_FAILED, task_pb2.TASK_STATUS_CANCELLED}
)
# A watch that ends with one of these was cut off (server gone, restarting, overloaded), not refused.
RESUMABLE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
# Calls gRPC may repeat on UNAVAILABLE, and on a CANCELLED this client did not ask for (gRPC never
# retries a call its caller cancelled): a server's gRPC core sheds calls past its pending-call
# limit with that status. Left out: CreateWorkflow (a repeat would add a version) and
# DeleteWorkflow (a repeat would answer NOT_FOUND for a delete that worked). gRPC allows at most 5
# attempts, so the waits between them widen fast (up to 0.2, 0.6, 1.8, 5 s, at random below
# each): calls shed together come back spread out. With 0.1 s growing twofold, half the runs of a
# 3,000-call burst against a server shedding past 400 lost a call after five attempts.
_RETRYABLE_METHODS = [
    {"service": "mcp.v1.TaskService"},
    {"service": "mcp.v1.WorkflowService", "method": "GetWorkflow"},
    {"service": "mcp.v1.WorkflowService", "method": "ListWorkflows"},
    {"service": "mcp.v1.WorkflowService", "method": "ValidateWorkflow"},
    {"service": "mcp.v1.ProtocolRegistry"},
]
_SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": _RETRYABLE_METHODS,
                "retryPolicy": {
                    "maxAttempts": 5,
                    "initialBackoff": "0.2s",
                    "maxBackoff": "5s",
                    "backoffMultiplier": 3,
                    "retryableStatusCodes": ["UNAVAILABLE", "CANCELLED"],
                },
            }
        ]
    }
)
_CHANNEL_OPTIONS = [
    ("grpc.service_config", _SERVICE_CONFIG),
    ("grpc.enable_retries", 1),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    # Notice a server that vanished without closing the connection (a cut network) within ~40 s:
    # a ping after 30 s of quiet, and any ping unanswered for 10 s closes the connection (without
    # ping_timeout an unanswered ping already in flight holds the keepalive back for a minute).
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.ping_timeout_ms", 10_000),
]


@dataclass(frozen=True)
class Tls:
    """How to reach the server over TLS: the CA to trust (None: the system's), and for mutual TLS
    this client's certificate chain and key, all PEM; `server_name` overrides the name checked."""

    root_certificates: bytes | None = None
    certificate_chain: bytes | None = None
    private_key: bytes | None = None
    server_name: str | None = None

    @classmethod
    def from_files(
        cls,
        ca: str | Path | None = None,
        cert: str | Path | None = None,
        key: str | Path | None = None,
        server_name: str | None = None,
    ) -> Tls:
        """Read the PEM files; each is optional, as in the constructor."""

        def read(path: str | Path | None) -> bytes | None:
            return Path(path).read_bytes() if path else None

        return cls(read(ca), read(cert), read(key), server_name)


def open_channel(
    address: str, tls: Tls | bool | None = None, options: list[tuple[str, Any]] | None = None
) -> grpc.aio.Channel:
    """A channel to `address` with the client's retry and keepalive settings, over TLS when asked."""
    channel_options = [*_CHANNEL_OPTIONS, *(options or [])]
    if tls is None or tls is False:
        return grpc.aio.insecure_channel(address, options=channel_options)
    config = Tls() if tls is True else tls
    if config.server_name:
        channel_options.append(("grpc.ssl_target_name_override", config.server_name))
    credentials = grpc.ssl_channel_credentials(config.root_certificates, config.private_key, config.certificate_chain)
    return grpc.aio.secure_channel(address, credentials, options=channel_options)


def bearer_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """The call metadata that carries a token, or none."""
    return (("authorization", f"Bearer {token}"),) if token else ()


class Backoff:
    """Exponential backoff with full jitter, and a budget of time spent failing in a row."""

    def __init__(self, initial: float = 0.1, maximum: float = 5.0, give_up_after: float | None = 300.0) -> None:
        self.initial, self.maximum, self.give_up_after = initial, maximum, give_up_after
        self._attempt = 0
        self._failing_since: float | None = None

    def reset(self) -> None:
        self._attempt = 0
        self._failing_since = None

    def exhausted(self) -> bool:
        """Record a failure; True once failures have gone on longer than the budget."""
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        return self.give_up_after is not None and now - self._failing_since > self.give_up_after

    async def sleep(self) -> None:
        delay = min(self.maximum, self.initial * 2**self._attempt)
        self._attempt += 1
        await asyncio.sleep(random.uniform(delay / 2, delay))


def _submit_request(
    workflow_id: str,
    input: Mapping[str, JsonValue] | None,
    request_id: str | None,
    priority: int,
    labels: Mapping[str, str] | None,
    version: int,
) -> task_pb2.SubmitTaskRequest:
    try:
        input_data = sendable_struct(dict(input or {}))
    except ValueError as exc:  # too deep for protobuf: refused here, as the server would refuse it
        raise McpError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"input_data: {exc}",
            reason="VALUE_TOO_DEEP",
            violations=(FieldViolation("input_data", str(exc)),),
        ) from None
    return task_pb2.SubmitTaskRequest(
        workflow_id=workflow_id,
        workflow_version=version,
        input_data=input_data,
        priority=priority,
        request_id=request_id or uuid.uuid4().hex,
        labels=dict(labels or {}),
    )


def workflow_from(definition: workflow_pb2.Workflow | Mapping[str, Any] | str) -> workflow_pb2.Workflow:
    """A Workflow message from itself, a dict, or JSON or YAML text (YAML needs PyYAML: `mcp-sdk[yaml]`).

    A definition that does not fit the Workflow message raises McpError INVALID_ARGUMENT naming
    what is wrong, as the server would."""
    if isinstance(definition, workflow_pb2.Workflow):
        return definition
    data: Any = definition
    if isinstance(definition, str):
        try:
            data = strict_json(definition)
        except ValueError:  # JSONDecodeError is one
            data = _load_yaml(definition)
    if not isinstance(data, Mapping):
        raise _bad_definition(f"a workflow definition is an object, not {type(data).__name__}")
    try:
        return json_format.ParseDict(dict(data), workflow_pb2.Workflow())
    except json_format.ParseError as exc:
        raise _bad_definition(str(exc)) from None


def _load_yaml(text: str) -> Any:
    try:
        import yaml
    except ImportError:
        raise _bad_definition(
            "this text is not JSON, and reading YAML needs PyYAML: pip install 'mcp-sdk[yaml]'"
        ) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise _bad_definition(f"neither JSON nor YAML: {exc}") from None


def _bad_definition(description: str) -> McpError:
    return McpError(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"malformed workflow definition: {description}",
        reason="MALFORMED_DEFINITION",
        violations=(FieldViolation("workflow", description),),
    )


class _Cursor:
    """Where a watch is: each event after `last` is delivered once, in order, up to the terminal
    one; whatever arrives again after a reconnect is skipped."""

    def __init__(self, after: int, backoff: Backoff) -> None:
        self.last = after
        self.ended = False
        self.backoff = backoff

    def fresh(self, events: Iterable[task_pb2.TaskEvent]) -> Iterator[task_pb2.TaskEvent]:
        """The events not delivered yet, up to and with the terminal one; an event delivered
        means the connection works, so the backoff starts over."""
        for event in events:
            if self.ended:
                return
            if event.sequence <= self.last:
                continue
            self.last = event.sequence
            self.ended = event.type in TERMINAL_EVENTS
            self.backoff.reset()
            yield event


class Client:
    """An async client of one orchestrator; use it as an async context manager, or close() it.

    `timeout` bounds each unary call (seconds); `watch_give_up_after` is how long a watch keeps
    reconnecting to a server that does not answer before it raises (None: forever)."""

    def __init__(
        self,
        address: str,
        *,
        token: str | None = None,
        tls: Tls | bool | None = None,
        timeout: float = 30.0,
        watch_give_up_after: float | None = 300.0,
        channel_options: list[tuple[str, Any]] | None = None,
    ) -> None:
        self.address = address
        self.timeout = timeout
        self.watch_give_up_after = watch_give_up_after
        self._metadata = bearer_metadata(token)
        self._owns_channel = True
        self.channel = open_channel(address, tls, channel_options)
        self.tasks = task_pb2_grpc.TaskServiceStub(self.channel)
        self.workflows = workflow_pb2_grpc.WorkflowServiceStub(self.channel)
        self.registry = registry_pb2_grpc.ProtocolRegistryStub(self.channel)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection (a client from `with_token` leaves its parent's open)."""
        if self._owns_channel:
            await self.channel.close()

    def with_token(self, token: str | None) -> Client:
        """A client on this one's connection that calls as another principal: for a gateway or a
        console that serves many users over one channel."""
        other = copy.copy(self)
        other._metadata = bearer_metadata(token)
        other._owns_channel = False
        return other

    async def _call(self, method: Callable[..., Awaitable[Any]], request: Any) -> Any:
        """A unary call with the token and timeout; failures as McpError. (The stubs are untyped:
        each caller names the response type it gets.)"""
        try:
            return await method(request, metadata=self._metadata, timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            raise McpError.from_rpc_error(exc) from None

    async def _pages(self, method: Callable[..., Awaitable[Any]], request: Any) -> AsyncIterator[Any]:
        """Each response of a paged List call, following next_page_token to the end."""
        while True:
            reply = await self._call(method, request)
            yield reply
            if not reply.next_page_token:
                return
            request.page_token = reply.next_page_token

    # ---- workflows ------------------------------------------------------------------------
    async def create_workflow(
        self, definition: workflow_pb2.Workflow | Mapping[str, Any] | str
    ) -> workflow_pb2.Workflow:
        """Store a workflow (a new version when its id exists); returns it with its version."""
        request = workflow_pb2.CreateWorkflowRequest(workflow=workflow_from(definition))
        reply: workflow_pb2.CreateWorkflowResponse = await self._call(self.workflows.CreateWorkflow, request)
        return reply.workflow

    async def validate_workflow(
        self, definition: workflow_pb2.Workflow | Mapping[str, Any] | str
    ) -> workflow_pb2.ValidateWorkflowResponse:
        """Check a definition without storing it; an invalid one raises McpError with the violations."""
        reply: workflow_pb2.ValidateWorkflowResponse = await self._call(
            self.workflows.ValidateWorkflow, workflow_pb2.ValidateWorkflowRequest(workflow=workflow_from(definition))
        )
        return reply

    async def get_workflow(self, workflow_id: str, version: int = 0) -> workflow_pb2.Workflow:
        """A workflow's definition (version 0: the latest)."""
        request = workflow_pb2.GetWorkflowRequest(workflow_id=workflow_id, version=version)
        reply: workflow_pb2.GetWorkflowResponse = await self._call(self.workflows.GetWorkflow, request)
        return reply.workflow

    async def list_workflows(self) -> list[workflow_pb2.Workflow]:
        """Every workflow's latest version, across all pages."""
        return [
            w
            async for reply in self._pages(
                self.workflows.ListWorkflows, workflow_pb2.ListWorkflowsRequest(page_size=1000)
            )
            for w in reply.workflows
        ]

    async def delete_workflow(self, workflow_id: str) -> workflow_pb2.DeleteWorkflowResponse:
        """Delete every version of a workflow (tasks that run it keep their copy)."""
        reply: workflow_pb2.DeleteWorkflowResponse = await self._call(
            self.workflows.DeleteWorkflow, workflow_pb2.DeleteWorkflowRequest(workflow_id=workflow_id)
        )
        return reply

    # ---- tasks ----------------------------------------------------------------------------
    async def submit(
        self,
        workflow_id: str,
        input: Mapping[str, JsonValue] | None = None,
        *,
        request_id: str | None = None,
        priority: int = 0,
        labels: Mapping[str, str] | None = None,
        version: int = 0,
    ) -> task_pb2.Task:
        """Submit a task; returns it as stored (PENDING, or further along already).

        `request_id` makes the submission idempotent for this principal: the same id returns the
        first task. When none is given one is generated, so that gRPC's retries never submit twice."""
        request = _submit_request(workflow_id, input, request_id, priority, labels, version)
        reply: task_pb2.SubmitTaskResponse = await self._call(self.tasks.SubmitTask, request)
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
        page_size: int = 100,
        page_token: str = "",
    ) -> task_pb2.ListTasksResponse:
        """One page of tasks, newest first; pass `next_page_token` back for the next."""
        request = task_pb2.ListTasksRequest(
            statuses=list(statuses), workflow_id=workflow_id, page_size=page_size, page_token=page_token
        )
        reply: task_pb2.ListTasksResponse = await self._call(self.tasks.ListTasks, request)
        return reply

    async def cancel(self, task_id: str, reason: str = "") -> task_pb2.Task:
        """Cancel a task; cancelling one that has ended changes nothing and returns it."""
        reply: task_pb2.CancelTaskResponse = await self._call(
            self.tasks.CancelTask, task_pb2.CancelTaskRequest(task_id=task_id, reason=reason)
        )
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
        cursor = _Cursor(after, backoff)
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
    ) -> AsyncGenerator[task_pb2.TaskEvent, None]:
        """Submit a task and yield its events from the first (QUEUED, which names the task in
        `task_id`) to the terminal one, each once, in one SubmitAndWatchTask stream (options as
        `submit`). A cut connection or a restarting server is waited out as `watch` does: once the
        task is known the watch goes on after the last event delivered, before that the same
        request id is asked again, which streams the same task. On a server without
        SubmitAndWatchTask: `submit`, then `watch`."""
        request = _submit_request(workflow_id, input, request_id, priority, labels, version)
        backoff = Backoff(give_up_after=self.watch_give_up_after)
        cursor = _Cursor(0, backoff)
        task_id = ""
        while not task_id:
            call: Any = self.tasks.SubmitAndWatchTask(request, metadata=self._metadata)
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
                if exc.code() not in RESUMABLE_CODES or backoff.exhausted():
                    raise McpError.from_rpc_error(exc) from None
            finally:
                call.cancel()
            if not task_id:
                await backoff.sleep()
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
    ) -> JsonValue:
        """Submit a task and wait for its result, in one RunTask call (options as `submit`; raises
        as `result`). A cut connection or a restarting server is waited out as `watch` does, by
        asking again with the same request id, which waits for the same task. On a server
        without RunTask: `submit`, then `result`."""
        request = _submit_request(workflow_id, input, request_id, priority, labels, version)
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
                    if exc.code() not in RESUMABLE_CODES or backoff.exhausted():
                        raise McpError.from_rpc_error(exc) from None
                await backoff.sleep()
            return await self._outcome(reply.task)

    # ---- protocols ------------------------------------------------------------------------
    async def list_protocols(self) -> list[registry_pb2.RegisteredProtocol]:
        """Every registered protocol instance: address, health, breaker, capacity and what is in use."""
        return [
            p
            async for reply in self._pages(
                self.registry.ListProtocols, registry_pb2.ListProtocolsRequest(page_size=1000)
            )
            for p in reply.protocols
        ]

    async def register_protocols(self, address: str, ttl: float = 0) -> list[registry_pb2.RegisteredProtocol]:
        """Register the plugin at `address` (its Describe says which protocols); `ttl` seconds, 0: no expiry."""
        request = registry_pb2.RegisterProtocolRequest(address=address)
        if ttl:
            request.ttl.FromNanoseconds(int(ttl * 1e9))
        reply: registry_pb2.RegisterProtocolResponse = await self._call(self.registry.RegisterProtocol, request)
        return list(reply.protocols)
