"""Ending a task while it is still queued: CANCELLED in one store call, its listeners (the
metrics) told, as a run's end tells them."""

from __future__ import annotations

from collections.abc import Sequence

from mcp_sdk.proto import task_pb2
from mcp_server.engine.event_types import E
from mcp_server.engine.events import now
from mcp_server.engine.ports import EventListener, TaskQueue


async def cancel_queued(
    queue: TaskQueue, listeners: Sequence[EventListener], task_id: str, why: str
) -> task_pb2.Task | None:
    """Cancel a task still queued; the task as it ended, or None if it left the queue meanwhile."""
    event = task_pb2.TaskEvent(task_id=task_id, type=E.TASK_EVENT_TYPE_CANCELLED, time=now(), message=why)
    cancelled = await queue.cancel_pending(task_id, event)
    if cancelled is not None:
        event.sequence = cancelled.last_sequence
        for listener in listeners:
            listener(cancelled, event)
    return cancelled
