"""The two interfaces the engine is given: how to call a protocol, and where state lives."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from mcp_sdk.proto import protocol_pb2, registry_pb2, task_pb2, workflow_pb2
from mcp_server.engine.payload import Payload

EventListener = Callable[[task_pb2.Task, task_pb2.TaskEvent], None]
"""Told of every event a run emits, as it is emitted (for metrics, traces, logs). It must not
block and must not raise."""


@dataclass(frozen=True)
class CallContext:
    """Where a protocol call comes from; sent to the plugin as its ExecutionContext."""

    task_id: str
    step_path: str
    attempt: int
    idempotency_key: str
    workflow_id: str = ""
    workflow_version: int = 0
    # the task's priority: calls waiting for capacity are granted in this order
    priority: int = 0


@dataclass(frozen=True)
class CallResult:
    output: Payload
    directive: protocol_pb2.Directive | None = None


class ProtocolCallError(Exception):
    """A protocol call failed. `code` is the gRPC status code name, e.g. "UNAVAILABLE"."""

    def __init__(self, code: str, message: str, *, breaker_open: bool = False, final: bool = False) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.breaker_open = breaker_open
        # trying the same call again cannot help (the engine refused it before sending)
        self.final = final
        # only the instance that answered failed; other instances of the protocol serve
        self.instance_only = False

    @classmethod
    def from_plugin(cls, code: str, message: str, address: str) -> ProtocolCallError:
        """The error a plugin call ended with. The orchestrator stops waiting on a call by
        cancelling its own task, never with a CANCELLED status, so a CANCELLED that comes back
        was the instance's or the transport's doing (a server shutting down, gRPC shedding a
        burst): the call may never have run, and it is UNAVAILABLE, retried by policy."""
        if code == "CANCELLED":
            return cls("UNAVAILABLE", f"instance {address} cancelled the call ({message or 'no details'})")
        return cls(code, message or code)


class CallObserver(Protocol):
    """What a caller reports while a call is under way; the engine turns it into events."""

    async def progress(self, progress: protocol_pb2.Progress) -> None: ...

    def breaker_changed(self, protocol: str, old: str, new: str) -> None: ...

    def waiting(self, protocol: str, needs: str, why: str) -> None:
        """The call waits for an instance with enough free capacity (`needs`, described)."""
        ...

    def granted(self, protocol: str, address: str) -> None:
        """The waiting call got capacity on `address` and starts."""
        ...


class ProtocolCaller(Protocol):
    """Calls one protocol once. Retries, fallbacks and step timeouts are the engine's job;
    the caller applies the per-attempt deadline and the protocol's circuit breaker."""

    async def call(
        self,
        protocol: str,
        input_data: Payload,
        context: CallContext,
        *,
        timeout: float | None,
        stream: bool = False,
        observer: CallObserver | None = None,
    ) -> CallResult: ...


@dataclass(frozen=True)
class StepRecord:
    """One step state as stored: a serialized StepState whose values at or above
    SHARED_VALUE_BYTES are ValueRefs into the task's value store (content-addressed)."""

    index: int
    path: str
    data: bytes


@dataclass
class Checkpoint:
    """What one atomic, fenced write adds to a task: never the whole task again, only what changed."""

    task_id: str
    lease_token: int
    status: int
    # a serialized Task with only the fields that change: status, times, error, last_sequence,
    # step_count, result or result_ref. A read appends it to the fixed part written at create.
    live: bytes
    steps: Sequence[StepRecord] = ()
    events: Sequence[task_pb2.TaskEvent] = ()
    # serialized Values by SHA-256 that the task's value store does not hold yet
    values: Mapping[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class CapacityRequest:
    """A call asking the capacity ledger for room on one of `candidates`.

    `member` ranks it among the waiters (`<enqueued ms>:<waiter_id>`, FIFO) after `priority`;
    `needs` and each candidate's capacity are `c,m,g` strings (cpu_millis, memory_mb, gpus;
    a capacity of 0 is unlimited). A grant is held for `lease_seconds` unless renewed; a
    waiter that stops asking is forgotten after `wait_seconds`."""

    waiter_id: str
    member: str
    priority: int
    needs: str
    candidates: Mapping[str, str]
    lease_seconds: float
    wait_seconds: float


@dataclass(frozen=True)
class TaskFilter:
    """What ListTasks asks for; empty fields match everything."""

    statuses: tuple[int, ...] = ()
    workflow_id: str = ""
    owner: str = ""


@dataclass(frozen=True)
class TaskPage:
    """One page of ListTasks from the store: the tasks, for each the page token that goes on
    after it, whether more tasks follow the last one, and how many match in all (0: unknown)."""

    tasks: list[task_pb2.Task]
    after: list[str]
    more: bool
    total: int


class Store(Protocol):
    """Durable state: workflow versions, tasks (a fixed part, a live part, step records, large
    values), event logs, the task queue and the protocol registry. Implemented by
    `state.sqlite` and `state.redis`; both pass tests/contract/test_store_contract.py."""

    # workflows
    async def create_workflow(self, workflow: workflow_pb2.Workflow) -> workflow_pb2.Workflow: ...
    async def get_workflow(self, workflow_id: str, version: int = 0) -> workflow_pb2.Workflow | None: ...
    async def latest_workflow_version(self, workflow_id: str) -> int:
        """The latest version of a workflow that exists (0 when none does)."""
        ...

    async def list_workflows(self, page_size: int, page_token: str) -> tuple[list[workflow_pb2.Workflow], str]: ...
    async def delete_workflow(self, workflow_id: str) -> int: ...

    # tasks
    async def create_task(
        self,
        task: task_pb2.Task,
        event: task_pb2.TaskEvent,
        max_queue: int = 0,
        fingerprint: str = "",
        values: Mapping[str, bytes] | None = None,
    ) -> tuple[task_pb2.Task, bool]:
        """Store `task` (its fixed part: everything but status and what changes while it runs)
        with its first event and the `values` its input refers to, and queue it. A task of the
        same owner with the same request_id is returned instead (created False) when its
        fingerprint matches; when it does not, RequestIdReused. QueueFull past `max_queue`."""
        ...

    async def create_leased(
        self,
        task: task_pb2.Task,
        event: task_pb2.TaskEvent,
        holder: str,
        lease_seconds: float,
        max_queue: int = 0,
        fingerprint: str = "",
        values: Mapping[str, bytes] | None = None,
    ) -> tuple[task_pb2.Task, bool, int]:
        """create_task for a task that `holder` starts at once: it is stored already leased
        (the lease token is returned; 0 when an existing task was returned) and never queued.
        If the holder dies, the lease runs out and the task is queued like any other."""
        ...

    async def get_task(self, task_id: str) -> task_pb2.Task | None:
        """The task without its step states (fixed part merged with the live part)."""
        ...

    async def list_tasks(self, page_size: int, page_token: str, where: TaskFilter) -> TaskPage:
        """Tasks newest first, as get_task returns them."""
        ...

    async def read_steps(self, task_id: str, start: int, limit: int) -> list[StepRecord]:
        """Step records with index >= start, in index order, at most `limit`."""
        ...

    async def read_step(self, task_id: str, path: str) -> StepRecord | None: ...
    async def read_values(self, task_id: str, digests: Sequence[str]) -> dict[str, bytes]: ...

    async def save_checkpoint(self, checkpoint: Checkpoint) -> None:
        """Write the checkpoint atomically if `lease_token` still holds the task (LeaseLost if
        not). Safe to repeat: events already in the log are skipped."""
        ...

    async def cancel_pending(self, task_id: str, event: task_pb2.TaskEvent) -> task_pb2.Task | None: ...
    async def request_cancel(self, task_id: str, reason: str) -> None: ...
    async def cancel_requests(self, task_ids: Sequence[str]) -> dict[str, str]: ...
    async def read_events(self, task_id: str, after_sequence: int, limit: int = 1000) -> list[task_pb2.TaskEvent]: ...
    async def wait_events(self, task_id: str, after_sequence: int, timeout: float) -> list[task_pb2.TaskEvent]: ...

    # queue and leases
    async def claim_task(self, owner: str, lease_seconds: float) -> tuple[task_pb2.Task, int] | None: ...
    async def renew_leases(self, leases: Mapping[str, int], lease_seconds: float) -> list[str]:
        """Renew the leases {task_id: token} in one call; return the task ids whose lease is lost."""
        ...

    async def release_expired_leases(self) -> int: ...
    async def queue_length(self) -> int: ...
    async def queue_depth_by_priority(self) -> dict[int, int]: ...
    async def purge_finished(self) -> int: ...

    # registry
    async def put_protocol(self, entry: registry_pb2.RegisteredProtocol) -> None: ...
    async def delete_protocols(self, name: str = "", address: str = "") -> int: ...
    async def list_protocol_entries(self) -> list[registry_pb2.RegisteredProtocol]: ...
    async def remove_protocol_entries(self, entries: Sequence[registry_pb2.RegisteredProtocol]) -> list[int]:
        """Delete these entries, each only if it is stored unchanged since it was read (an entry
        renewed meanwhile stays); return the indexes (in `entries`) of those deleted."""
        ...

    # capacity of plugin instances, shared by replicas (see protocols/capacity.py)
    async def acquire_capacity(self, request: CapacityRequest) -> str | None:
        """Register or refresh the waiter, grant every waiter that fits in order, and return
        the instance granted to this one (None: ask again later)."""
        ...

    async def release_capacity(self, waiter_id: str, member: str) -> int:
        """Give back a grant, or withdraw a waiter; return how many calls wait now."""
        ...

    async def capacity_waiting(self) -> int:
        """How many calls of any replica wait for capacity now."""
        ...

    async def renew_capacity(self, waiter_ids: Sequence[str], lease_seconds: float) -> None: ...
    async def capacity_in_use(self) -> dict[str, str]:
        """What calls hold now on each instance, as `c,m,g` by address."""
        ...

    # circuit breakers shared by replicas
    async def put_breaker_state(self, protocol: str, state: str) -> None: ...
    async def breaker_states(self) -> dict[str, str]: ...

    async def ping(self) -> None: ...
    async def close(self) -> None: ...
