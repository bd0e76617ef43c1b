"""Tasks an event calls off (Workflow.cancel_on, Inngest's cancelOn).

As a task is submitted, the key each of its workflow's cancel_on gives over its input is put on
it as a label (`mcp/cancel-on/<the event's digest>` = the key; `mcp/cancel-on-any/<digest>` when
any key will do), so the store's label index finds it. A publish of an event some version's
cancel_on names (recorded as versions are created: EventInterest.cancels) looks up the
tasks not yet ended that carry its name and key, keeps those the publisher may see and whose
version's condition holds, and starts cancelling each (CancelTask's path without waiting for the
end: a task that cleans up runs its clean-up first). A publish sent again finds them cancelled.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import struct_pb2

from mcp_sdk.proto import events_pb2, task_pb2
from mcp_server.auth import Principal
from mcp_server.engine.cel import ExpressionError
from mcp_server.engine.context import NodeFailed
from mcp_server.engine.payload import struct_to_python
from mcp_server.engine.plan import CancelOnPlan, Plan
from mcp_server.engine.plans import PlanCache
from mcp_server.engine.ports import TaskFilter, TaskStore
from mcp_server.engine.records import task_input
from mcp_server.engine.waiting import event_key
from mcp_server.errors import FieldViolation, InvalidArgument, McpError, ResourceExhausted, Unavailable
from mcp_server.service.cancelling import Cancelling

log = logging.getLogger(__name__)

KEYED_LABEL = "mcp/cancel-on/"  # + the event name's digest: the key an event must carry
ANY_KEY_LABEL = "mcp/cancel-on-any/"  # + the digest: an event of any key
ANY_KEY = "yes"
CANCEL_ON_LABELS = (KEYED_LABEL, ANY_KEY_LABEL)
IN_FLIGHT = (task_pb2.TASK_STATUS_PENDING, task_pb2.TASK_STATUS_RUNNING, task_pb2.TASK_STATUS_WAITING)
PAGE = 200
AT_ONCE = 32  # cancels started together
REASON = "CANCEL_ON"  # the reason's prefix


def cancel_on_labels(plan: Plan, input_data: struct_pb2.Struct) -> dict[str, str]:
    """The labels a task of `plan` with this input carries for its cancel_on; InvalidArgument
    (BAD_CANCEL_ON_KEY) when a key does not evaluate to a string or integer of at most 256 characters."""
    labels: dict[str, str] = {}
    variables: dict[str, Any] | None = None
    for i, cancel in enumerate(plan.cancel_on):
        if cancel.key is None:
            labels[ANY_KEY_LABEL + _digest(cancel.event)] = ANY_KEY
            continue
        variables = variables or {"input": struct_to_python(input_data)}
        which = f"the workflow's cancel_on[{i}]"
        try:
            labels[KEYED_LABEL + _digest(cancel.event)] = event_key(cancel.key.evaluate(variables), which)
        except ExpressionError as exc:
            raise _bad_key(f"{which}: `key` does not evaluate on this input: {exc}") from None
        except NodeFailed as failed:  # as a wait's or a publish node's key: a string or an integer
            raise _bad_key(failed.message) from None
    return labels


@dataclass
class CalledOff:
    """What a publish called off: the tasks it started cancelling, and the first it could not
    start cancelling for now (the store away), for which the publish fails, to be sent again."""

    cancelled: list[str] = field(default_factory=list)
    later: McpError | None = None


class CallingOff:
    """The cancels a publish starts (see the module's docstring)."""

    def __init__(self, tasks: TaskStore, plans: PlanCache, cancelling: Cancelling) -> None:
        self.tasks = tasks
        self.plans = plans
        self.cancelling = cancelling

    async def call_off(self, request: events_pb2.PublishEventRequest, event_id: str, principal: Principal) -> CalledOff:
        """Start cancelling the tasks the event calls off."""
        digest = _digest(request.name)
        labels = [(KEYED_LABEL + digest, request.key), (ANY_KEY_LABEL + digest, ANY_KEY)]
        if not await self.tasks.labelled(labels):  # no task ever had them: the usual publish
            return CalledOff()
        found = await asyncio.gather(*(self._in_flight(label) for label in labels))
        event = {
            "name": request.name,
            "key": request.key,
            "data": struct_to_python(request.data),
            "labels": dict(request.labels),
            "event_id": event_id,
        }
        why = f"{REASON}: event {request.name!r} ({event_id})"
        chosen = [task for tasks in found for task in tasks if principal.is_admin or task.owner == principal.name]
        off = CalledOff()
        for start in range(0, len(chosen), AT_ONCE):
            batch = chosen[start : start + AT_ONCE]
            outcomes = await asyncio.gather(*(self._call_off(task, request.name, event, why) for task in batch))
            for task, outcome in zip(batch, outcomes, strict=True):
                if outcome is True:
                    off.cancelled.append(task.task_id)
                elif isinstance(outcome, McpError):
                    off.later = off.later or outcome
        return off

    async def _in_flight(self, label: tuple[str, str]) -> list[task_pb2.Task]:
        where = TaskFilter(statuses=IN_FLIGHT, labels=(label,))
        tasks: list[task_pb2.Task] = []
        token = ""
        while True:
            page = await self.tasks.list_tasks(PAGE, token, where)
            tasks += page.tasks
            if not page.more or not page.after:
                return tasks
            token = page.after[-1]

    async def _call_off(self, task: task_pb2.Task, name: str, event: Mapping[str, Any], why: str) -> bool | McpError:
        """True once the task is being cancelled, False when the event does not call it off, the
        error when it could not be called off now."""
        plan = await self.plans.get(task.workflow_id, task.workflow_version)
        cancel = next((c for c in plan.cancel_on if c.event == name), None)
        if cancel is None or not await self._holds(cancel, task, event):
            return False
        try:
            return await self.cancelling.cancel_soon(task.task_id, why)
        except McpError as exc:  # the store away or full: the publish fails, and sent again calls it off
            log.warning("task %s: not called off by event %r now: %s", task.task_id, name, exc.message)
            return exc if isinstance(exc, Unavailable | ResourceExhausted) else False

    async def _holds(self, cancel: CancelOnPlan, task: task_pb2.Task, event: Mapping[str, Any]) -> bool:
        if cancel.condition is None:
            return True
        variables = {"event": event, "input": (await task_input(self.tasks, task)).python()}
        try:
            holds = cancel.condition.evaluate(variables)
        except ExpressionError as exc:
            log.warning("task %s: the cancel_on condition of event %r failed: %s", task.task_id, event["name"], exc)
            return False
        return holds is True


def _digest(event: str) -> str:
    return hashlib.sha256(event.encode()).hexdigest()[:24]


def _bad_key(message: str) -> InvalidArgument:
    return InvalidArgument(message, violations=[FieldViolation("input_data", message)], reason="BAD_CANCEL_ON_KEY")
