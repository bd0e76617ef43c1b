"""Where a watch is: what has been delivered, so that each event arrives once, in order, up to
the terminal one, whatever reconnects happen."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from mcp_sdk.connection import Backoff
from mcp_sdk.proto import task_pb2

TERMINAL_EVENTS = frozenset(
    {task_pb2.TASK_EVENT_TYPE_COMPLETED, task_pb2.TASK_EVENT_TYPE_FAILED, task_pb2.TASK_EVENT_TYPE_CANCELLED}
)
TERMINAL_STATUSES = frozenset(
    {task_pb2.TASK_STATUS_COMPLETED, task_pb2.TASK_STATUS_FAILED, task_pb2.TASK_STATUS_CANCELLED}
)


class Cursor:
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
