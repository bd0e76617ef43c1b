"""Ending a task while it is still queued: CANCELLED in one store call, its listeners (the
metrics) told, as a run's end tells them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from mcp_sdk.proto import task_pb2
from mcp_server.engine.event_types import E
from mcp_server.engine.events import now
from mcp_server.engine.ports import EventListener, TaskQueue
from mcp_server.errors import Unavailable

log = logging.getLogger(__name__)
AT_ONCE = 32  # the expired tasks a sweep cancels at once (a burst ends in a fraction of the time one by one takes)


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


async def cancel_expired(
    queue: TaskQueue, listeners: Sequence[EventListener], task_ids: Sequence[str], why: str
) -> list[str]:
    """Cancel the queued tasks a sweep found past their queue deadline, `AT_ONCE` at a time; the
    ids it could not (the store away, a bug logged): a later sweep hands those out again. One that
    fails never keeps the others queued."""
    missed: list[str] = []
    for first in range(0, len(task_ids), AT_ONCE):
        batch = task_ids[first : first + AT_ONCE]
        outcomes = await asyncio.gather(
            *(cancel_queued(queue, listeners, task_id, why) for task_id in batch), return_exceptions=True
        )
        for task_id, outcome in zip(batch, outcomes):
            if isinstance(outcome, BaseException):
                missed.append(task_id)
                if not isinstance(outcome, Unavailable):
                    log.error("task %s: cancelling it past its queue deadline failed", task_id, exc_info=outcome)
    return missed
