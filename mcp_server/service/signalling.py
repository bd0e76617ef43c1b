"""SignalTask: a named signal with a payload, checked, then appended to the task once per
request_id (see WaitStore in engine/ports for how it reaches the step that waits for it)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from mcp_sdk.proto import task_pb2
from mcp_server.auth import ANONYMOUS_ADMIN, Principal
from mcp_server.engine.cel import ExpressionError
from mcp_server.engine.dispatcher import Dispatcher
from mcp_server.engine.event_types import E
from mcp_server.engine.events import make_event
from mcp_server.engine.plan import Plan
from mcp_server.engine.plans import PlanCache
from mcp_server.engine.ports import SignalDelivery, SignalOutcome, TaskStore, WaitRecord, WaitStore
from mcp_server.engine.ports.waits import EVENT_SIGNAL_PREFIX
from mcp_server.engine.records import task_input
from mcp_server.engine.values import ValueTooDeep, message_depth, value_to_python
from mcp_server.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    McpError,
    ResourceExhausted,
    Unavailable,
)
from mcp_server.service.access import require, visible_task
from mcp_server.settings import Settings
from mcp_server.state.common import TERMINAL, live_part

# how long SignalTask waits for the replica running the task to take a signal in
TAKE_IN_WAIT_SECONDS = 5.0


# a task full of signals, by the store's outcome: the limit's setting, the reason, what passed it
FULL = {
    "full": ("max_signals_per_task", "TOO_MANY_SIGNALS", "has received {:,} signals"),
    "full of bytes": (
        "max_signal_bytes_per_task",
        "TOO_MANY_SIGNAL_BYTES",
        "would hold more than {:,} bytes of signals with this one",
    ),
}


class Signalling:
    def __init__(
        self,
        settings: Settings,
        tasks: TaskStore,
        waits: WaitStore,
        plans: PlanCache,
        dispatcher: Dispatcher,
        counted: Callable[[str], None] = lambda outcome: None,
    ) -> None:
        self.counted = counted  # told the outcome of every signal (for metrics)
        self.settings = settings
        self.tasks = tasks
        self.waits = waits
        self.plans = plans
        self.dispatcher = dispatcher

    async def signal_task(
        self,
        request: task_pb2.SignalTaskRequest,
        principal: Principal = ANONYMOUS_ADMIN,
        event: Mapping[str, Any] | None = None,
    ) -> task_pb2.SignalTaskResponse:
        """Send the signal (see SignalTask in task.proto for what is refused, and why). `event`: the
        published event a wait for events is given (what its `condition` reads); a condition that
        does not hold raises FailedPrecondition CONDITION_NOT_MET, one that fails InvalidArgument."""
        try:
            answer = await self._send(request, principal, event)
        except McpError as exc:
            self.counted(f"refused: {exc.reason}")
            raise
        self.counted("repeated" if not answer.created else "taken" if answer.step_path else "kept")
        return answer

    async def _send(
        self, request: task_pb2.SignalTaskRequest, principal: Principal, event: Mapping[str, Any] | None
    ) -> task_pb2.SignalTaskResponse:
        require("task_id", request.task_id)
        require("signal", request.signal)
        header = await visible_task(self.tasks, request.task_id, principal)
        if header.status in TERMINAL and request.request_id:  # a repeat answers as the first did, ended or not
            for record in await self.waits.read_signals(request.task_id):
                if record.request.request_id == request.request_id:
                    return task_pb2.SignalTaskResponse(
                        sequence=record.sequence, created=False, step_path=record.assigned
                    )
        _not_finished(header)
        plan = await self.plans.get(header.workflow_id, header.workflow_version)
        await self._check(request, plan)
        if event is not None:
            await self._check_condition(request, plan, header, event)
        for _ in range(20):  # compare-and-set against the task's log: read again when it moved
            waits = await self.waits.read_waits(request.task_id)
            if request.step_path:
                _waits_for(request, waits)
            delivery = _delivery(header, request, waits)
            limits = self.settings.limits
            delivery = replace(
                delivery, max_signals=limits.max_signals_per_task, max_signal_bytes=limits.max_signal_bytes_per_task
            )
            if header.status == task_pb2.TASK_STATUS_WAITING and self.dispatcher.has_room():
                delivery = replace(delivery, holder=self.settings.replica_id, lease_seconds=self.settings.lease_seconds)
            outcome = await self.waits.send_signal(request.task_id, request, delivery)
            if outcome.status != "stale":
                return await self._answer(header, outcome)
            header = await visible_task(self.tasks, request.task_id, principal)
            _not_finished(header)
        raise Unavailable(f"task {request.task_id} changed under the signal twenty times; send it again")

    async def _check(self, request: task_pb2.SignalTaskRequest, plan: Plan) -> None:
        """Refuse a name no wait declares, a payload too large or too deep, and one a wait's schema
        rejects (the schema of the step named, or of every wait of that name), checked in a worker
        thread: a check is bounded (MAX_CHECK_STEPS) but can take a second, not the event loop's."""
        if request.signal not in plan.signals:
            declared = ", ".join(sorted(plan.signals)) or "none"
            raise InvalidArgument(
                f"no wait node of workflow {plan.workflow_id!r} version {plan.version} waits for signal "
                f"{request.signal!r} (it declares: {declared})",
                violations=[FieldViolation("signal", f"declared signals: {declared}")],
                reason="UNKNOWN_SIGNAL",
            )
        limits = self.settings.limits
        size = request.payload.ByteSize()
        if size > limits.max_input_bytes:
            raise InvalidArgument(
                f"payload is {size} bytes; the limit is {limits.max_input_bytes}",
                violations=[FieldViolation("payload", f"{size} bytes exceeds the limit of {limits.max_input_bytes}")],
                reason="INPUT_TOO_LARGE",
            )
        depth = message_depth(request.payload, limits.max_value_depth)
        if depth > limits.max_value_depth:
            problem = str(ValueTooDeep("payload", depth, limits.max_value_depth))
            raise InvalidArgument(problem, violations=[FieldViolation("payload", problem)], reason="VALUE_TOO_DEEP")
        node_id = _node_id(request.step_path) if request.step_path else ""
        waits = [w for w in plan.waits.values() if w.signal == request.signal and (not node_id or w.id == node_id)]
        payload = value_to_python(request.payload)
        schemas = [wait.schema for wait in waits if wait.schema is not None]
        problems = await asyncio.to_thread(lambda: [p for schema in schemas for p in schema.problems(payload)])
        if problems:
            what = _named(request.signal)
            raise InvalidArgument(
                f"the payload does not fit the schema of {what}: {problems[0][0]}: {problems[0][1]}",
                violations=[FieldViolation(field, why) for field, why in problems],
                reason="PAYLOAD_REJECTED",
            )

    async def _check_condition(
        self, request: task_pb2.SignalTaskRequest, plan: Plan, header: task_pb2.Task, event: Mapping[str, Any]
    ) -> None:
        """Refuse the event to the wait at request.step_path when its `condition` does not hold."""
        wait = plan.waits.get(_node_id(request.step_path)) if request.step_path else None
        if wait is None or wait.condition is None:
            return
        given = (await task_input(self.tasks, header)).python()
        try:
            holds = wait.condition.evaluate({"event": dict(event), "input": given})
        except ExpressionError as exc:
            raise InvalidArgument(f"the wait's condition {exc}", reason="CONDITION_FAILED") from None
        if not isinstance(holds, bool):
            raise InvalidArgument(
                f"the wait's condition `{wait.condition.source}` gave a {type(holds).__name__}, not a bool",
                reason="CONDITION_FAILED",
            )
        if not holds:
            raise FailedPrecondition(
                f"the wait's condition `{wait.condition.source}` does not hold for this event",
                reason="CONDITION_NOT_MET",
            )

    async def _answer(self, header: task_pb2.Task, outcome: SignalOutcome) -> task_pb2.SignalTaskResponse:
        record = outcome.record
        if outcome.status in FULL:
            setting, reason, what = FULL[outcome.status]
            most = getattr(self.settings.limits, setting)
            raise ResourceExhausted(
                f"task {header.task_id} {what.format(most)}, the most a task may (MCP_LIMIT_{setting.upper()})",
                reason=reason,
            )
        if outcome.status == "finished" or record is None:
            raise FailedPrecondition(f"task {header.task_id} has finished", reason="TASK_FINISHED")
        if outcome.status == "duplicate":
            return task_pb2.SignalTaskResponse(sequence=record.sequence, created=False, step_path=record.assigned)
        if outcome.status == "delivered":
            if outcome.leased is not None:  # resumed here at once, without a trip through the queue
                self.dispatcher.adopt(*outcome.leased)
            else:
                self.dispatcher.wake()
            return task_pb2.SignalTaskResponse(sequence=record.sequence, created=True, step_path=record.assigned)
        # appended: the replica running the task takes it in (this one at once, another within its poll)
        self.dispatcher.signalled(header.task_id)
        sequence, step_path = await self._taken_in(header, record.index)
        return task_pb2.SignalTaskResponse(sequence=sequence, created=True, step_path=step_path)

    async def _taken_in(self, header: task_pb2.Task, index: int) -> tuple[int, str]:
        """The SIGNAL_RECEIVED event of signal `index` (sequence, step), once the run wrote it;
        (0, "") if it did not within TAKE_IN_WAIT_SECONDS."""
        after = header.last_sequence
        deadline = time.monotonic() + TAKE_IN_WAIT_SECONDS
        while (left := deadline - time.monotonic()) > 0:
            for event in await self.tasks.wait_events(header.task_id, after, timeout=left):
                after = event.sequence
                if event.type == E.TASK_EVENT_TYPE_SIGNAL_RECEIVED and event.data.fields["index"].number_value == index:
                    return event.sequence, event.step_path
                if event.type in (E.TASK_EVENT_TYPE_COMPLETED, E.TASK_EVENT_TYPE_FAILED, E.TASK_EVENT_TYPE_CANCELLED):
                    return 0, ""
            await asyncio.sleep(0)
        return 0, ""


def _named(signal: str) -> str:
    """A signal as an error names it: a wait for an event's by the event."""
    if signal.startswith(EVENT_SIGNAL_PREFIX):
        return f"event {signal.removeprefix(EVENT_SIGNAL_PREFIX)!r}"
    return f"signal {signal!r}"


def _not_finished(header: task_pb2.Task) -> None:
    if header.status in TERMINAL:
        raise FailedPrecondition(
            f"task {header.task_id} already finished as {task_pb2.TaskStatus.Name(header.status)}",
            reason="TASK_FINISHED",
        )


def _waits_for(request: task_pb2.SignalTaskRequest, waits: dict[str, WaitRecord]) -> None:
    wait = waits.get(request.step_path)
    if wait is None or wait.signal != request.signal or wait.assigned:
        raise FailedPrecondition(
            f"step {request.step_path!r} of task {request.task_id} does not wait for signal {request.signal!r}",
            violations=[FieldViolation("step_path", "names no step waiting for this signal now")],
            reason="STEP_NOT_WAITING",
        )


def _delivery(
    header: task_pb2.Task, request: task_pb2.SignalTaskRequest, waits: dict[str, WaitRecord]
) -> SignalDelivery:
    """How the signal is written if no replica holds the task: the step it goes to (the one named,
    else the one waiting longest for its name, else none: kept), its event, the new live part."""
    sequence = header.last_sequence + 1
    assigned = request.step_path
    if not assigned:
        free = [(w.since_ms, path) for path, w in waits.items() if w.signal == request.signal and not w.assigned]
        assigned = min(free)[1] if free else ""
    event = make_event(
        header.task_id,
        sequence,
        E.TASK_EVENT_TYPE_SIGNAL_RECEIVED,
        step_path=assigned,
        message=f"signal {request.signal!r} received",
        data={"signal": request.signal, "request_id": request.request_id, "step_path": assigned},
    )
    live = task_pb2.Task()
    live.CopyFrom(header)
    live.last_sequence = sequence
    wait = replace(waits[assigned], assigned=sequence) if assigned in waits else None
    return SignalDelivery(header.last_sequence, event, live_part(live), assigned, wait)


def _node_id(step_path: str) -> str:
    """The node a step path runs: its last part, without a round (`#2`) or an item (`[3]`)."""
    return step_path.rsplit("/", 1)[-1].split("#", 1)[0].split("[", 1)[0]
