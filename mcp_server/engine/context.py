"""RunContext: the mutable state of one task run: step states, events, checkpoints.

It owns the task while the task runs. Events get their sequence numbers here, in the order
they happen. A checkpoint writes, in one atomic and fenced store call, only what changed since
the last one: the task's live header, the step records that changed, the events not yet
written and the large values not yet stored (see records.py), so the cost of a step does not
grow with the steps before it.

Writes are behind, not in the way (write_behind.py says when they happen): a node's completion
starts a background checkpoint that runs while the next plugin call is under way, so a sequence
costs one store round trip per step. A run notices a lost lease at the next node it starts, and
while the store is down (or silent) it pauses there until the pending writes go through.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from google.rpc import status_pb2

from mcp_sdk.proto import task_pb2
from mcp_server.engine.cleanup_replay import replaying
from mcp_server.engine.event_types import E
from mcp_server.engine.events import bounded, make_event, timestamp_of
from mcp_server.engine.instants import rfc3339_of
from mcp_server.engine.node_results import NodeFailed as NodeFailed
from mcp_server.engine.node_results import NodeResult as NodeResult
from mcp_server.engine.paused_runs import PausedRuns
from mcp_server.engine.payload import Payload
from mcp_server.engine.plan import LEAF_KINDS
from mcp_server.engine.ports import (
    Checkpoint,
    EventListener,
    EventPublisher,
    ProtocolCaller,
    StepCache,
    StepRecord,
    TaskStore,
    UnitGate,
    WaitRecord,
    waiter_name,
)
from mcp_server.engine.records import (
    TASK_RESULT,
    TASK_RESULT_REF,
    RunStep,
    ValueSink,
    step_record,
    take_input,
    take_value,
)
from mcp_server.engine.restored_steps import TASK_SCOPE, outputs_by_scope
from mcp_server.engine.step_ends import code_name, code_number, duration_ms, end_data
from mcp_server.engine.suspensions import Suspensions
from mcp_server.engine.value_chunks import read_whole
from mcp_server.engine.write_behind import WriteBehind
from mcp_server.errors import CancelRequested, LeaseLost
from mcp_server.settings import Limits

T = TypeVar("T")
USAGE_NAMES_LEFT_OUT = "usage_names_left_out"  # in a task's usage: names past the limit, counted
UNFINISHED = (task_pb2.STEP_STATUS_RUNNING, task_pb2.STEP_STATUS_WAITING, task_pb2.STEP_STATUS_PENDING)
# told to the listeners (metrics, traces) once written: the store may refuse an end (lease lost, a cancel first)
TASK_ENDS = frozenset({E.TASK_EVENT_TYPE_COMPLETED, E.TASK_EVENT_TYPE_FAILED, E.TASK_EVENT_TYPE_CANCELLED})


@dataclass
class RunContext:
    task: task_pb2.Task
    store: TaskStore
    caller: ProtocolCaller
    lease_token: int
    task_input: Payload
    outputs_by_id: dict[str, Payload] = field(default_factory=dict)
    restored_outputs: dict[str, dict[str, Payload]] = field(default_factory=dict)  # see restored_steps.py
    listeners: Sequence[EventListener] = ()
    limits: Limits = field(default_factory=Limits)
    result: Payload | None = None
    _steps: dict[str, RunStep] = field(default_factory=dict)
    _dirty: dict[str, None] = field(default_factory=dict)  # an ordered set of paths
    _pending: list[task_pb2.TaskEvent] = field(default_factory=list)
    _untold: list[task_pb2.TaskEvent] = field(default_factory=list)  # ends not yet written (TASK_ENDS)
    _values: ValueSink = field(default_factory=ValueSink)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    paused_runs: PausedRuns = field(default_factory=PausedRuns)  # the replica's, shared by its runs
    # a start (of the task or a step) is written with the next write, or on its own this long
    # after: a step that ends sooner carries its start with its end (one write, not two)
    start_write_delay: float = 0.0
    written_live: bytes = b""  # the live header part of the latest checkpoint written
    # the run's waits and signals (see suspensions.py); with status WAITING, when it is due (Unix ms)
    suspensions: Suspensions = field(default_factory=lambda: Suspensions(park_horizon=2.0))
    due_ms: int = 0
    header_changed: bool = False  # the live header changed with no event (the task parked): write it
    rerun_input: Payload | None = None  # a rerun's: what its rerun_from_step_path receives
    rate_limits: UnitGate | None = None  # where calls take rate-limit units (None: unlimited)
    step_cache: StepCache | None = None  # where cached steps' outputs are kept (None: no cache)
    publisher: EventPublisher | None = None  # where publish nodes publish (None: they cannot)
    # how the steps with a cache fared (path -> "hit" or "miss", and the output's size), for their end event
    cache_outcomes: dict[str, tuple[str, int]] = field(default_factory=dict)
    # whether the run's lease went unrenewed so long that it must stop (asked before each node)
    lease_stale: Callable[[], bool] = lambda: False

    def __post_init__(self) -> None:
        self._values.chunked_from = self.limits.chunked_value_bytes
        self._writes = WriteBehind(self.checkpoint, lambda: bool(self._pending or self._dirty))

    async def restore(self) -> None:
        """Load the step records and values an earlier life of this run wrote."""
        records = await self.store.read_steps(self.task.task_id, 0, self.task.step_count)
        states = [(r.index, task_pb2.StepState.FromString(r.data)) for r in records]
        digests = sorted({state.output_ref.sha256 for _, state in states if state.output_ref.sha256})
        values = await read_whole(self.store, self.task.task_id, digests, self._values.stored) if digests else {}
        self._values.stored.update(values)
        for index, state in states:
            self._steps[state.path] = RunStep(index, state, take_input(state), take_value(state, "output", values))
            if state.status == task_pb2.STEP_STATUS_WAITING and state.wait.signal and not state.reused:
                deadline_ms = state.wait.deadline.ToMilliseconds() if state.wait.HasField("deadline") else 0
                since_ms = state.start_time.ToMilliseconds()
                key = state.wait.key if state.wait.event else None
                self.suspensions.dormant[state.path] = WaitRecord(state.wait.signal, deadline_ms, since_ms, key=key)
        self.restored_outputs = outputs_by_scope((step.state, step.output) for step in self._steps.values())
        self.outputs_by_id.update(self.restored_outputs.get(TASK_SCOPE, {}))

    # ---- events -------------------------------------------------------------------------
    def emit(self, type_: int, *, flush_soon: bool = False, **fields: Any) -> task_pb2.TaskEvent:
        """Record an event; it is written with the next checkpoint (or soon, if asked)."""
        if replaying() is not None:  # a clean-up's walk tells nothing again of what it replays
            return make_event(self.task.task_id, self.task.last_sequence, type_, **fields)
        self.task.last_sequence += 1
        event = make_event(self.task.task_id, self.task.last_sequence, type_, **fields)
        event = bounded(event, self.limits.max_event_bytes)
        self._pending.append(event)
        if type_ in TASK_ENDS:
            self._untold.append(event)
        else:
            for listener in self.listeners:
                listener(self.task, event)
        if flush_soon:
            self.flush_soon()
        return event

    def flush_soon(self) -> None:
        """Start writing pending changes in the background (WriteBehind.soon)."""
        self._writes.soon()

    def flush_within(self, delay: float) -> None:
        """Have pending changes written within `delay` seconds (WriteBehind.within)."""
        self._writes.within(delay)

    def cancel_delayed_flush(self, abandoned: bool = False) -> None:
        """Drop a write waiting for its delay (`abandoned`: and stop one under way)."""
        self._writes.cancel_delayed(abandoned)

    def retract_completion(self) -> None:
        """Take back the COMPLETED end the store refused (CancelRequested), before the run ends
        the task CANCELLED instead: its event, never written, and its result."""
        if self._pending and self._pending[-1].type == E.TASK_EVENT_TYPE_COMPLETED:
            self._pending.pop()
            self._untold = [event for event in self._untold if event.type != E.TASK_EVENT_TYPE_COMPLETED]
            self.task.last_sequence -= 1
        self.result = None
        self.task.ClearField("end_time")

    def ready_for_next_node(self) -> Awaitable[None]:
        """Raise LeaseLost if another replica took the task, or may take it now (its lease went
        unrenewed too long); wait while the store is down or silent (WriteBehind.ready, handed on
        as is: this runs before every node)."""
        if self.lease_stale():
            raise LeaseLost("its lease went unrenewed too long: the run stops here")
        return self._writes.ready()

    async def checkpoint(self) -> None:
        """Write what changed, atomically; wait out store outages."""
        async with self._lock:
            if not self._pending and not self._dirty and not self.header_changed:
                return
            self.header_changed = False
            events, self._pending = self._pending, []
            ends, self._untold = self._untold, []
            paths, self._dirty = list(self._dirty), {}
            steps = [StepRecord(self._steps[p].index, p, self._record(p)) for p in paths]
            live = self._live()
            values = self._values.take()
            taken, waits = self.suspensions.take_changes()
            checkpoint = Checkpoint(
                self.task.task_id,
                self.lease_token,
                self.task.status,
                live,
                steps,
                events,
                values,
                waits,
                taken,
                self.due_ms if self.task.status == task_pb2.TASK_STATUS_WAITING else 0,
            )
            try:
                await self.paused_runs.call(
                    self.task.task_id, lambda: self.store.save_checkpoint(checkpoint), self._refused
                )
            except BaseException as exc:
                self._values.rejected(values)
                self.suspensions.restore_changes(taken, waits)
                self._untold[:0] = ends
                if isinstance(exc, CancelRequested):  # written again, as the run ends CANCELLED instead
                    self._pending[:0], self._dirty = events, dict.fromkeys(paths) | self._dirty
                raise
            for end in ends:
                for listener in self.listeners:
                    listener(self.task, end)
            self.written_live = live
            self._values.written(values)
            for path in paths:
                self._steps[path].input = self._values.release(self._steps[path].input)
            self._writes.store_down = False

    def _refused(self) -> None:
        self._writes.store_down = True  # the run waits for this write before it starts another node

    async def store_call(self, make: Callable[[], Awaitable[T]]) -> T:
        """A store call a step makes (its cache, rate-limit units): asked again while the store
        refuses it, so that an outage pauses the task rather than fail it."""
        return await self.paused_runs.call(self.task.task_id, make)

    def _record(self, path: str) -> bytes:
        step = self._steps[path]
        return step_record(step.state, step.input, step.output, self._values)

    def _live(self) -> bytes:
        """The header fields that change while the task runs, serialized."""
        task = self.task
        live = task_pb2.Task(status=task.status, last_sequence=task.last_sequence, step_count=len(self._steps))
        for name in ("start_time", "end_time", "error", "cancel_request"):
            if task.HasField(name):
                getattr(live, name).CopyFrom(getattr(task, name))
        if task.usage:
            live.usage.update(task.usage)
        data = live.SerializeToString()
        if self.result is not None:  # written once, at the end: inline up to the inline limit
            data += self._values.encode(self.result, TASK_RESULT, TASK_RESULT_REF, self.limits.inline_value_bytes + 1)
        return data

    # ---- step states --------------------------------------------------------------------
    def began(self, path: str) -> bool:
        """Whether the node at `path` began (in this life of the run or an earlier one)."""
        return path in self._steps

    def finished(self, path: str) -> NodeResult | None:
        """The result of a node that completed before (in an earlier life of this run)."""
        step = self._steps.get(path)
        if step is None or step.state.status != task_pb2.STEP_STATUS_COMPLETED or step.output is None:
            return None
        directive = step.state.directive if step.state.HasField("directive") else None
        return NodeResult(step.output, directive)

    def failed_before(self, path: str) -> NodeFailed | None:
        """How the node at `path` failed in an earlier life of this run (None: it did not)."""
        step = self._steps.get(path)
        if step is None or step.state.status != task_pb2.STEP_STATUS_FAILED:
            return None
        return NodeFailed(code_name(step.state.error.code), step.state.error.message)

    def first_failed_step(self, within: str, status: int = task_pb2.STEP_STATUS_FAILED) -> str:
        """The path of the first step at or inside `within` that ended with `status` (in step order), or `within`."""
        for path, step in self._steps.items():
            failed = step.state.status == status and step.state.kind in LEAF_KINDS
            if failed and (path == within or path.startswith(within + "/")):
                return path
        return within

    async def begin(self, path: str, node_id: str, kind: str, protocol: str = "") -> task_pb2.StepState:
        await self.ready_for_next_node()
        step = self._steps.get(path)
        if step is None:
            step = self._steps[path] = RunStep(
                len(self._steps), task_pb2.StepState(path=path, node_id=node_id, kind=kind, protocol=protocol)
            )
        state = step.state
        if state.status == task_pb2.STEP_STATUS_WAITING or (
            state.status == task_pb2.STEP_STATUS_RUNNING and kind not in LEAF_KINDS
        ):
            # An earlier life of the run began it: a wait waits on, a composite goes on, both from
            # when they began (a leaf in progress then is run again: it starts anew)
            step.started_ns = step.started_ns or state.start_time.ToNanoseconds()
            return state
        if state.status == task_pb2.STEP_STATUS_RUNNING and state.HasField("start_time"):
            # a leaf an earlier life began runs again, and counts from when it first began: its
            # timeout spans the run's lives, as the task's does (see step._deadline)
            step.started_ns = state.start_time.ToNanoseconds()
        else:
            state.status = task_pb2.STEP_STATUS_RUNNING
            step.started_ns = time.time_ns()
            state.start_time.CopyFrom(timestamp_of(step.started_ns))
        state.ClearField("error")
        self._dirty[path] = None
        resumed_in_backoff: dict[str, Any] = {}
        if state.HasField("retry_time"):  # it goes on waiting out a retry's backoff an earlier life began
            due = state.retry_time.ToNanoseconds() / 1e9
            resumed_in_backoff = {"attempt": state.failed_attempts, "data": {"retry_time": rfc3339_of(due)}}
        self.emit(
            E.TASK_EVENT_TYPE_STEP_STARTED,
            step_path=path,
            protocol=protocol,
            message=f"{kind} {node_id} started",
            **resumed_in_backoff,
        )
        self.flush_within(self.start_write_delay)
        return state

    def add_usage(self, path: str, usage: Mapping[str, float]) -> None:
        """What a call of the step at `path` used: added to the step's usage and the task's, each
        at most `max_usage_names_per_task` names (the rest counted as left out)."""
        most, totals = self.limits.max_usage_names_per_task, (self.state(path).usage, self.task.usage)
        for name, amount in usage.items():
            for used in totals:  # a call reports at most 64 names, but it may be new ones each call
                if name in used or len(used) < most:
                    used[name] += amount
                else:
                    used[USAGE_NAMES_LEFT_OUT] += 1

    def usage_within(self, path: str) -> dict[str, float]:
        """What the steps at and inside `path` used, summed by usage name (any life of the run)."""
        inside, used = path + "/", collections.Counter[str]()
        for at, step in self._steps.items():
            if step.state.usage and (at == path or at.startswith(inside)):
                used.update(step.state.usage)
        return dict(used)

    def record_input(self, path: str, value: Payload) -> None:
        """What a step's protocol is about to receive (written with the step's start)."""
        self._steps[path].input = value
        self._dirty[path] = None

    def complete(self, path: str, result: NodeResult) -> None:
        step = self._steps[path]
        state = step.state
        state.status = task_pb2.STEP_STATUS_COMPLETED
        step.output = result.output
        if result.directive is not None:
            state.directive.CopyFrom(result.directive)
        ended_ns = time.time_ns()
        state.end_time.CopyFrom(timestamp_of(ended_ns))
        self._dirty[path] = None
        self.emit(
            E.TASK_EVENT_TYPE_STEP_COMPLETED,
            step_path=path,
            protocol=state.protocol,
            attempt=state.attempts,
            message=f"{state.kind} {state.node_id} completed",
            flush_soon=True,
            data={
                "duration_ms": duration_ms(step.started_ns, step.state, ended_ns),
                "kind": state.kind,
                **end_data(state, ended_ns, self.cache_outcomes.pop(path, None)),
            },
        )

    def fail(self, path: str, code: str, message: str, *, cancelled: bool = False) -> None:
        step = self._steps[path]
        state = step.state
        state.status = task_pb2.STEP_STATUS_CANCELLED if cancelled else task_pb2.STEP_STATUS_FAILED
        state.ClearField("retry_time")  # cancelled in a parked backoff: no retry is due any more
        state.error.CopyFrom(status_pb2.Status(code=code_number(code), message=message))
        ended_ns = time.time_ns()
        state.end_time.CopyFrom(timestamp_of(ended_ns))
        self._dirty[path] = None
        if state.wait.rate_limit_keys and self.rate_limits is not None:  # it waits in no line any more
            self.rate_limits.give_up(state.wait.rate_limit_keys, waiter_name(self.task.task_id, path))
        if not cancelled:
            self.emit(
                E.TASK_EVENT_TYPE_STEP_FAILED,
                step_path=path,
                protocol=state.protocol,
                attempt=state.attempts,
                message=message,
                data={
                    "code": code,
                    "duration_ms": duration_ms(step.started_ns, step.state, ended_ns),
                    "kind": state.kind,
                    **end_data(state, ended_ns, None),
                },
            )

    def consumed_signals(self) -> set[int]:
        """The SIGNAL_RECEIVED sequences of the signals that completed wait steps took."""
        return {
            step.state.wait.received_sequence
            for step in self._steps.values()
            if step.state.status == task_pb2.STEP_STATUS_COMPLETED
            and step.state.wait.received_sequence
            and not step.state.reused  # kept by a rerun: it took a signal of the task it reruns
        }

    def abandon_unfinished(
        self, code: str, message: str, *, earlier_lives_only: bool = False, within: str = ""
    ) -> None:
        """Mark every step still running, waiting or not begun (inside `within`, if given) as
        cancelled: a cancelled task's last write; `earlier_lives_only`: those an earlier life of the
        run left so and this life did not come back to (a timeout ran out meanwhile, a branch failed)."""
        for path, step in self._steps.items():
            inside = not within or path.startswith(within + "/")
            if inside and step.state.status in UNFINISHED and not (earlier_lives_only and step.started_ns):
                self.fail(path, code, message, cancelled=True)
        if not earlier_lives_only:
            for path in list(self.suspensions.waiters):
                self.suspensions.ended(path, None)

    def state(self, path: str) -> task_pb2.StepState:
        """The state of the node at `path`, to change (the change is written with the next checkpoint)."""
        self._dirty[path] = None
        return self._steps[path].state

    def began_at(self, path: str) -> float:
        """When the node at `path` first began (Unix seconds), whichever life of the run began it."""
        step = self._steps[path]
        return (step.started_ns or step.state.start_time.ToNanoseconds()) / 1e9
