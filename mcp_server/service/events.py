"""Publishing events (EventService in events.proto, docs/events.md): every workflow whose latest
version has a trigger on the event's name, and whose filter holds, gets a task owned by the
publisher, with the input its trigger makes of the event; and the waits for the event take it
(service/event_waits.py).

A publish is a set of submissions, each with a request_id made from the event's id and the
workflow, so a publish sent again gets the tasks the first one started and starts the rest. A
refusal that may pass (UNAVAILABLE, RESOURCE_EXHAUSTED) fails the call once the others are
started, as SubmitTask would, for the client to send it again; one that will not is answered."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from google.rpc import code_pb2, status_pb2

from mcp_sdk.proto import events_pb2, task_pb2
from mcp_server.auth import Principal
from mcp_server.engine.cel import Expression, ExpressionError
from mcp_server.engine.payload import struct_to_python
from mcp_server.engine.plan import TriggerPlan
from mcp_server.engine.plans import PlanCache
from mcp_server.engine.ports import EventInterest, Published, WorkflowStore
from mcp_server.engine.ports.events import HOPS_LABEL
from mcp_server.errors import McpError, NotFound, ResourceExhausted, Unavailable
from mcp_server.service.cancel_on import CalledOff, CallingOff
from mcp_server.service.event_waits import EventWaits, Reached
from mcp_server.service.submission import Submission, check_input
from mcp_server.settings import Settings

EVENT_LABEL = "mcp/event"  # on every task an event started: the event's name
EVENT_ID_LABEL = "mcp/event-id"  # and its id


@dataclass(frozen=True)
class _Refused:
    """A workflow whose trigger matched but whose task cannot start: for good (`later` False), or
    for now (the error to answer the call with)."""

    code: int
    message: str
    later: McpError | None = None


class Events:
    def __init__(
        self,
        settings: Settings,
        workflows: WorkflowStore,
        plans: PlanCache,
        submission: Submission,
        waits: EventWaits,
        calling_off: CallingOff,
        observe: Callable[[str], None] = lambda outcome: None,
    ) -> None:
        self.limits = settings.limits
        self.workflows = workflows
        self.plans = plans
        self.submission = submission
        self.waits = waits
        self.calling_off = calling_off
        # the event names some workflow version waits for, with the longest lookback last read
        # (bounded by the workflows stored: a name is here only once a version waits for it)
        self._waited: dict[str, float] = {}
        self.observe = observe  # one call per workflow an event reached: started, existing, refused, later

    async def publish(
        self, request: events_pb2.PublishEventRequest, principal: Principal
    ) -> events_pb2.PublishEventResponse:
        check_input("data", request.data, self.limits)
        Submission.check_request_id(request.request_id)
        event_id = request.request_id or uuid.uuid4().hex
        event = {
            "name": request.name,
            "data": struct_to_python(request.data),
            "labels": dict(request.labels),
            "event_id": event_id,
            "key": request.key,
        }
        reply = events_pb2.PublishEventResponse(event_id=event_id)
        interest = asyncio.ensure_future(self._interest(request.name))
        # a name some version waited for stays so: its waits are looked up at once, while the
        # triggers' tasks start; a publish waits for the longer
        known = self._waited.get(request.name)
        if known is None:
            known = (await interest).lookback
        later, reached, off = await asyncio.gather(
            self._trigger(interest, request, event, principal, reply),
            self._wake(known, interest, request, event_id, principal),
            self._call_off(interest, request, event_id, principal),
        )
        reply.cancelled.extend(off.cancelled)
        for task_id, path, created in reached.woken:
            reply.woken.add(task_id=task_id, step_path=path, created=created)
        for task_id, path, status in reached.refused:
            reply.refused_waits.add(task_id=task_id, step_path=path, status=status)
        later = later or reached.later or off.later
        if later is not None:
            raise later
        return reply

    async def deliver_kept(self, task_id: str, owner: str, path: str, name: str, key: str, since_ms: int) -> None:
        """A wait's lookback (see EventPublisher in engine/ports)."""
        await self.waits.deliver_kept(task_id, owner, path, name, key, since_ms)

    async def _interest(self, name: str) -> EventInterest:
        interest = await self.workflows.event_interest(name)
        if interest.lookback is not None:
            self._waited[name] = max(interest.lookback, self._waited.get(name, 0.0))
        return interest

    async def _wake(
        self,
        known: float | None,
        interest: Awaitable[EventInterest],
        request: events_pb2.PublishEventRequest,
        event_id: str,
        principal: Principal,
    ) -> Reached:
        """The waits for the event when some workflow version waits for its name (`known`: the
        longest lookback among them as last read, None: none waits); the event is kept for that
        lookback, at most what the server allows, and for longer if the read under way finds that
        a version created since looks back further."""
        if known is None:
            return Reached()
        most = self.limits.event_lookback_seconds
        await self.waits.keep(request, event_id, principal, min(known, most))
        reached = await self.waits.wake(request, event_id, principal)
        if (lookback := (await interest).lookback or 0.0) > known:
            await self.waits.keep(request, event_id, principal, min(lookback, most))
        return reached

    async def _call_off(
        self,
        interest: Awaitable[EventInterest],
        request: events_pb2.PublishEventRequest,
        event_id: str,
        principal: Principal,
    ) -> CalledOff:
        """The tasks the event cancels, looked for when some version's cancel_on names it."""
        if not (await interest).cancels:
            return CalledOff()
        return await self.calling_off.call_off(request, event_id, principal)

    async def _trigger(
        self,
        interest: Awaitable[EventInterest],
        request: events_pb2.PublishEventRequest,
        event: Mapping[str, Any],
        principal: Principal,
        reply: events_pb2.PublishEventResponse,
    ) -> McpError | None:
        """Start the task of every workflow whose trigger takes the event, into `reply`; the first
        refusal for now, if any."""
        later: McpError | None = None
        subscribed = (await interest).subscribers
        outcomes = await asyncio.gather(*(self._start(w, v, event, request, principal) for w, v in subscribed))
        for (workflow_id, version), (outcome, created) in zip(subscribed, outcomes, strict=True):
            if isinstance(outcome, _Refused) and outcome.later is not None:
                # asked again once, alone: a publish sent again re-finds its tasks at once, and on
                # Redis each of those holds a place in the owner's share of the queue until it is
                # found, so the new ones may have been refused for room that is there now
                outcome, created = await self._start(workflow_id, version, event, request, principal)
            if isinstance(outcome, task_pb2.Task):
                reply.tasks.add(
                    workflow_id=workflow_id, workflow_version=version, task_id=outcome.task_id, created=created
                )
                self.observe("started" if created else "existing")
            elif isinstance(outcome, _Refused) and outcome.later is None:
                status = status_pb2.Status(code=outcome.code, message=outcome.message)
                reply.refused.add(workflow_id=workflow_id, workflow_version=version, status=status)
                self.observe("refused")
            elif isinstance(outcome, _Refused):
                later = later or outcome.later
                self.observe("later")
        return later

    async def publish_for(
        self, name: str, data: Mapping[str, Any], request_id: str, owner: str, hops: int, key: str = ""
    ) -> Published:
        """A publish node's publish (see engine/publish.py): as `owner`, the tasks it starts
        labelled with the chain's length."""
        request = events_pb2.PublishEventRequest(
            name=name, request_id=request_id, labels={HOPS_LABEL: str(hops)}, key=key
        )
        request.data.update(dict(data))
        reply = await self.publish(request, Principal(owner, frozenset()))
        return Published(
            reply.event_id,
            tuple((t.workflow_id, t.task_id) for t in reply.tasks),
            tuple((r.workflow_id, r.status.message) for r in reply.refused),
            tuple((w.task_id, w.step_path) for w in reply.woken),
        )

    async def _start(
        self,
        workflow_id: str,
        version: int,
        event: Mapping[str, Any],
        request: events_pb2.PublishEventRequest,
        principal: Principal,
    ) -> tuple[task_pb2.Task | _Refused | None, bool]:
        """The task this workflow's trigger starts (None: no trigger of it takes the event)."""
        try:
            plan = await self.plans.get(workflow_id, version)
            trigger = _taking(plan.triggers, event)
            if trigger is None:
                return None, False
            given = event["data"] if trigger.input is None else _evaluate(trigger.input, event, "input")
            if not isinstance(given, dict):
                raise _Invalid(f"the trigger's input is a {type(given).__name__}, not an object")
            submit = task_pb2.SubmitTaskRequest(
                workflow_id=workflow_id,
                workflow_version=version,
                priority=request.priority,
                request_id=_request_id(event["event_id"], workflow_id),
                labels={**request.labels, EVENT_LABEL: request.name, EVENT_ID_LABEL: event["event_id"]},
            )
            submit.input_data.update(given)
            return await self.submission.submit_task(submit, principal)
        except _Invalid as exc:
            return _Refused(_INVALID_ARGUMENT, f"workflow {workflow_id!r}: {exc}"), False
        except NotFound:
            return None, False  # deleted since its subscription was read: it takes no event now
        except (Unavailable, ResourceExhausted) as exc:
            return _Refused(exc.code.value[0], exc.message, later=exc), False
        except McpError as exc:
            return _Refused(exc.code.value[0], exc.message), False


class _Invalid(Exception):
    """A trigger's CEL failed or made something that is not an input."""


_INVALID_ARGUMENT = code_pb2.INVALID_ARGUMENT


def _taking(triggers: tuple[TriggerPlan, ...], event: Mapping[str, Any]) -> TriggerPlan | None:
    """The first trigger on the event's name whose filter holds (one task per workflow and event)."""
    for trigger in triggers:
        if trigger.event != event["name"]:
            continue
        if trigger.filter is None:
            return trigger
        holds = _evaluate(trigger.filter, event, "filter")
        if not isinstance(holds, bool):
            raise _Invalid(f"the trigger's filter `{trigger.filter.source}` gave a {type(holds).__name__}, not a bool")
        if holds:
            return trigger
    return None


def _evaluate(expression: Expression, event: Mapping[str, Any], what: str) -> Any:
    try:
        return expression.evaluate({"event": dict(event)})
    except ExpressionError as exc:
        raise _Invalid(f"the trigger's {what} {exc}") from None


def _request_id(event_id: str, workflow_id: str) -> str:
    """The request_id of the task `event_id` starts for `workflow_id`: the same on every publish of
    the event, within the length a request_id may have."""
    return "event:" + hashlib.sha256(f"{event_id}\n{workflow_id}".encode()).hexdigest()[:40]
