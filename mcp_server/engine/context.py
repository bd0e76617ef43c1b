"""RunContext: the mutable state of one task run: step states, events, checkpoints.

It owns the task snapshot while the task runs. Events get their sequence numbers here, in
the order they happen; a checkpoint writes the snapshot and every event not yet written in
one atomic store call, so the log and the snapshot never disagree.

Writes are behind, not in the way: a node's completion starts a background checkpoint that
runs while the next plugin call is under way, and whatever happened meanwhile (the next
step's start) rides along in the same write, so a sequence costs one store round trip per
step. A run notices a lost lease at the next node it starts, and while the store is down it
pauses there until the pending writes go through.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import timestamp_pb2
from google.rpc import code_pb2, status_pb2

from mcp_server.engine.ports import EventListener, ProtocolCaller, Store
from mcp_server.engine.values import dict_to_struct, python_to_value, value_to_python
from mcp_server.errors import LeaseLost, Unavailable
from mcp_server.proto import protocol_pb2, task_pb2
from mcp_server.settings import Limits

log = logging.getLogger(__name__)
E = task_pb2.TaskEventType


def now() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.GetCurrentTime()
    return stamp


def make_event(task_id: str, sequence: int, type_: int, **fields: Any) -> task_pb2.TaskEvent:
    data = fields.pop("data", None)
    event = task_pb2.TaskEvent(task_id=task_id, sequence=sequence, type=type_, time=now(), **fields)  # type: ignore[arg-type]
    if data:
        event.data.CopyFrom(dict_to_struct(data))
    return event


@dataclass(frozen=True)
class NodeResult:
    """What a node produced: its output value and, from a step, the protocol's directive."""

    output: Any
    directive: protocol_pb2.Directive | None = None


class NodeFailed(Exception):
    """A node failed; `code` is a gRPC status code name, the message names the node."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class RunContext:
    task: task_pb2.Task
    store: Store
    caller: ProtocolCaller
    lease_token: int
    task_input: dict[str, Any]
    outputs_by_id: dict[str, Any] = field(default_factory=dict)
    listeners: Sequence[EventListener] = ()
    limits: Limits = field(default_factory=Limits)
    _states: dict[str, task_pb2.StepState] = field(default_factory=dict)
    _pending: list[task_pb2.TaskEvent] = field(default_factory=list)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _background: asyncio.Task[None] | None = None
    _lease_lost: LeaseLost | None = None
    _store_down: bool = False

    def __post_init__(self) -> None:
        self._states = {s.path: s for s in self.task.steps}

    # ---- events -------------------------------------------------------------------------
    def emit(self, type_: int, *, flush_soon: bool = False, **fields: Any) -> task_pb2.TaskEvent:
        """Record an event; it is written with the next checkpoint (or soon, if asked)."""
        self.task.last_sequence += 1
        event = make_event(self.task.task_id, self.task.last_sequence, type_, **fields)
        self._pending.append(event)
        for listener in self.listeners:
            listener(self.task, event)
        if flush_soon:
            self.flush_soon()
        return event

    def flush_soon(self) -> None:
        """Start writing pending events in the background, unless a write is under way already
        (it picks them up when it is done)."""
        if self._background is None or self._background.done():
            self._background = asyncio.get_running_loop().create_task(self._flush_in_background())

    async def _flush_in_background(self) -> None:
        try:
            while self._pending:
                await self.checkpoint()
        except LeaseLost as exc:
            self._lease_lost = exc  # raised where the run next starts a node

    async def ready_for_next_node(self) -> None:
        """Raise LeaseLost if another replica took the task; wait while the store is down."""
        if self._lease_lost is not None:
            raise self._lease_lost
        if self._store_down and self._background is not None:
            await asyncio.shield(self._background)
            if self._lease_lost is not None:
                raise self._lease_lost

    async def checkpoint(self) -> None:
        """Write the snapshot and the pending events atomically; wait out store outages."""
        async with self._lock:
            if not self._pending:
                return
            events, self._pending = self._pending, []
            delay = 0.05
            while True:
                try:
                    await self.store.save_task(self.task, events, self.lease_token)
                    self._store_down = False
                    return
                except Unavailable as exc:
                    self._store_down = True
                    log.warning("store unavailable, task %s paused: %s", self.task.task_id, exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)

    # ---- step states --------------------------------------------------------------------
    def finished(self, path: str) -> NodeResult | None:
        """The result of a node that completed before (in an earlier life of this run)."""
        state = self._states.get(path)
        if state is None or state.status != task_pb2.STEP_STATUS_COMPLETED:
            return None
        directive = state.directive if state.HasField("directive") else None
        return NodeResult(value_to_python(state.output), directive)

    async def begin(self, path: str, node_id: str, kind: str, protocol: str = "") -> task_pb2.StepState:
        await self.ready_for_next_node()
        state = self._states.get(path)
        if state is None:
            state = self.task.steps.add(path=path, node_id=node_id, kind=kind, protocol=protocol)
            self._states[path] = state
        state.status = task_pb2.STEP_STATUS_RUNNING
        state.start_time.CopyFrom(now())
        state.ClearField("error")
        self.emit(E.TASK_EVENT_TYPE_STEP_STARTED, step_path=path, protocol=protocol,
                  message=f"{kind} {node_id} started", flush_soon=True)
        return state

    def complete(self, path: str, result: NodeResult) -> None:
        state = self._states[path]
        state.status = task_pb2.STEP_STATUS_COMPLETED
        state.output.CopyFrom(python_to_value(result.output))
        if result.directive is not None:
            state.directive.CopyFrom(result.directive)
        state.end_time.CopyFrom(now())
        self.emit(E.TASK_EVENT_TYPE_STEP_COMPLETED, step_path=path, protocol=state.protocol,
                  attempt=state.attempts, message=f"{state.kind} {state.node_id} completed", flush_soon=True,
                  data={"duration_ms": _duration_ms(state), "kind": state.kind})

    def fail(self, path: str, code: str, message: str, *, cancelled: bool = False) -> None:
        state = self._states[path]
        state.status = task_pb2.STEP_STATUS_CANCELLED if cancelled else task_pb2.STEP_STATUS_FAILED
        state.error.CopyFrom(status_pb2.Status(code=code_number(code), message=message))
        state.end_time.CopyFrom(now())
        if not cancelled:
            self.emit(E.TASK_EVENT_TYPE_STEP_FAILED, step_path=path, protocol=state.protocol,
                      attempt=state.attempts, message=message, data={"code": code, "duration_ms": _duration_ms(state), "kind": state.kind})

    def state(self, path: str) -> task_pb2.StepState:
        return self._states[path]

    def variables(self, prev: Any, scope: Mapping[str, Any]) -> dict[str, Any]:
        """The CEL context: see docs/cel.md."""
        return {"input": self.task_input, "prev": prev, "steps": self.outputs_by_id, **scope}


def _duration_ms(state: task_pb2.StepState) -> float:
    return round((state.end_time.ToNanoseconds() - state.start_time.ToNanoseconds()) / 1e6, 3)


def code_number(code: str) -> int:
    """The google.rpc.Code number of a status code name; UNKNOWN for a name that is not one."""
    try:
        return int(code_pb2.Code.Value(code))
    except ValueError:
        return int(code_pb2.UNKNOWN)
