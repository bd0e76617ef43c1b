"""The waits a published event reaches (WaitNode.event; docs/events.md "Waiting for an event"):
every step that waits for an event of its name with its key (or with no key), in a task the
publisher may see, takes it as a signal that only a publish can send (ports.event_signal).

The stores index such waits by (signal, key) in the same write as the wait itself, so the index
lists a wait from the checkpoint that makes it wait to the one (or the signal) that ends it. A
task that ends otherwise (a cancel, a purge) may leave its entry behind: the first publish that
finds it there removes it. An event reaches a task once: its signal's request_id is made from
the event's id alone, so a publish sent again is a repeat to every task it reached, whichever of
their steps waits by then, and of a task's waits for it the one with the event's own key (else
the first by path) takes it.

A publish looks for waits only when some workflow version waits for its name (the workflow store
records that as each version is created: WorkflowStore.event_interest). When one of those waits
has a `lookback`, the publish first keeps its event (KeptEventStore) for the longest of them, and a
wait with a `lookback`, once written, takes the oldest kept event it may (`deliver_kept`): each
side writes before it reads the other's, so an event and a wait that meet in time always meet."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import struct_pb2
from google.rpc import status_pb2

from mcp_sdk.proto import events_pb2, task_pb2
from mcp_server.auth import Principal
from mcp_server.engine.payload import struct_to_python
from mcp_server.engine.ports import TaskStore, WaitStore
from mcp_server.engine.ports.kept_events import (
    ANY_KEY_SLOT,
    MAX_KEPT_EVENT_BYTES,
    KeptEvent,
    KeptEventStore,
    key_slot,
)
from mcp_server.engine.ports.waits import event_signal
from mcp_server.errors import FailedPrecondition, InvalidArgument, McpError, NotFound, Unavailable
from mcp_server.service.signalling import Signalling

# tasks signalled at once by one publish
WAKE_CONCURRENCY = 32


@dataclass
class Reached:
    """What one publish did to the waits for its event: (task_id, step path, created) per wait
    that took it, (task_id, step path, status) per wait whose schema (or a full signal log)
    refused it, and the first refusal for now (the store away), for the call to fail with."""

    woken: list[tuple[str, str, bool]] = field(default_factory=list)
    refused: list[tuple[str, str, status_pb2.Status]] = field(default_factory=list)
    later: McpError | None = None


class EventWaits:
    def __init__(
        self,
        tasks: TaskStore,
        waits: WaitStore,
        kept: KeptEventStore,
        signalling: Signalling,
        observe: Callable[[str], None] = lambda outcome: None,
        max_kept_keys: int = 1000,
    ) -> None:
        self.tasks = tasks
        self.waits = waits
        self.kept = kept
        self.max_kept_keys = max_kept_keys  # per event name (MCP_LIMIT_MAX_KEPT_KEYS_PER_EVENT)
        self.signalling = signalling
        self.observe = observe  # one call per wait the event reached: woken, existing, refused, later

    async def keep(
        self, request: events_pb2.PublishEventRequest, event_id: str, principal: Principal, seconds: float
    ) -> None:
        """Keep the event `seconds` for the waits that look back (unless its data is too large to
        keep); before `wake`, so that a wait that begins meanwhile reads it (deliver_kept). Keeping
        it again, for longer, keeps it that long."""
        if seconds > 0 and request.data.ByteSize() <= MAX_KEPT_EVENT_BYTES:
            now_ms = int(time.time() * 1000)
            data, key = request.data.SerializeToString(), request.key
            kept = KeptEvent(event_id, principal.name, principal.is_admin, now_ms, data, key, dict(request.labels))
            await self.kept.keep(request.name, (key_slot(key), ANY_KEY_SLOT), kept, seconds, self.max_kept_keys)

    async def wake(self, request: events_pb2.PublishEventRequest, event_id: str, principal: Principal) -> Reached:
        """Give the event to the waits for it (see the module's docstring)."""
        name, key, data = request.name, request.key, request.data
        signal = event_signal(name)
        event = _event(name, key, data, event_id, request.labels)
        paths: dict[str, list[tuple[str, str]]] = defaultdict(list)
        # a task's waits for the event's own key first, then those for any key, each by path
        for its_key, task_id, path in sorted(
            await self.waits.event_waiters(signal, (key, "") if key else ("",)), key=lambda e: (not e[0], e[2])
        ):
            paths[task_id].append((its_key, path))
        payload = struct_pb2.Value()
        payload.struct_value.CopyFrom(data)
        request_id = _request_id(event_id)
        reached = Reached()
        room = asyncio.Semaphore(WAKE_CONCURRENCY)

        async def wake_task(task_id: str) -> None:
            async with room:
                await self._wake_task(task_id, signal, paths[task_id], payload, request_id, principal, event, reached)

        await asyncio.gather(*(wake_task(task_id) for task_id in paths))
        return reached

    async def _wake_task(
        self,
        task_id: str,
        signal: str,
        candidates: list[tuple[str, str]],
        payload: struct_pb2.Value,
        request_id: str,
        principal: Principal,
        event: dict[str, Any],
        reached: Reached,
    ) -> None:
        """Signal the first of the task's waits that still waits and whose condition holds; forget
        the entries that are stale."""
        for key, path in candidates:
            request = task_pb2.SignalTaskRequest(
                task_id=task_id, signal=signal, payload=payload, request_id=request_id, step_path=path
            )
            try:
                answer = await self.signalling.signal_task(request, principal, event)
            except NotFound:
                if await self.tasks.get_task(task_id) is None:  # gone; else another's task: left alone
                    await self.waits.forget_event_waiter(signal, key, task_id, path)
                return
            except FailedPrecondition as exc:
                if exc.reason == "CONDITION_NOT_MET":
                    self.observe("passed")
                    continue  # the next wait of the task, if any
                if exc.reason not in ("TASK_FINISHED", "STEP_NOT_WAITING"):
                    raise
                await self.waits.forget_event_waiter(signal, key, task_id, path)
                if exc.reason == "TASK_FINISHED":
                    return
                continue  # the next wait of the task, if any
            except Unavailable as exc:
                reached.later = reached.later or exc
                self.observe("later")
                return
            except McpError as exc:  # the wait's schema, a full signal log: it waits on
                status = status_pb2.Status(code=exc.code.value[0], message=exc.message)
                reached.refused.append((task_id, path, status))
                self.observe("refused")
                return
            reached.woken.append((task_id, answer.step_path or path, answer.created))
            self.observe("woken" if answer.created else "existing")
            return

    async def deliver_kept(self, task_id: str, owner: str, path: str, name: str, key: str, since_ms: int) -> None:
        """Give the wait at `path` (a lookback) the oldest kept event of `name` with `key` ("": of
        any key) since `since_ms`, published by its task's owner or an admin, that its task has
        not taken and its schema takes."""
        seen = set()
        for kept in await self.kept.kept(name, key_slot(key) if key else ANY_KEY_SLOT, since_ms):
            if kept.event_id in seen or not (kept.admin or kept.publisher == owner):
                continue
            seen.add(kept.event_id)
            payload = struct_pb2.Value()
            payload.struct_value.ParseFromString(kept.data)
            request = task_pb2.SignalTaskRequest(
                task_id=task_id,
                signal=event_signal(name),
                payload=payload,
                request_id=_request_id(kept.event_id),
                step_path=path,
            )
            event = _event(name, kept.key, payload.struct_value, kept.event_id, kept.labels)
            try:
                answer = await self.signalling.signal_task(request, Principal(owner, frozenset()), event)
            except InvalidArgument:  # its schema or its condition refuses this one: the next may do
                continue
            except FailedPrecondition as exc:
                if exc.reason == "CONDITION_NOT_MET":
                    continue
                return  # the wait has its event already (a live publish), or ended
            if answer.created:
                self.observe("kept")
                return
            # created: false: the task took this event before (an earlier wait): the next may do


def _event(name: str, key: str, data: struct_pb2.Struct, event_id: str, labels: Mapping[str, str]) -> dict[str, Any]:
    """The event as a wait's condition reads it (`event`), as a trigger's CEL does, key included."""
    return {"name": name, "key": key, "data": struct_to_python(data), "labels": dict(labels), "event_id": event_id}


def _request_id(event_id: str) -> str:
    """The request id of the signal an event gives a task: the same for every wait of the task."""
    return "event:" + hashlib.sha256(event_id.encode()).hexdigest()[:40]
