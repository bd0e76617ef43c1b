"""Following a task's event log: replay after a sequence, then live, until the terminal event."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

from mcp_sdk.proto import task_pb2
from mcp_server.auth import ANONYMOUS_ADMIN, Principal
from mcp_server.engine.event_types import E
from mcp_server.engine.events import in_messages
from mcp_server.engine.ports import TaskStore
from mcp_server.errors import ResourceExhausted
from mcp_server.service.access import visible_task
from mcp_server.settings import Limits
from mcp_server.state.common import TERMINAL

TERMINAL_EVENTS = frozenset({E.TASK_EVENT_TYPE_COMPLETED, E.TASK_EVENT_TYPE_FAILED, E.TASK_EVENT_TYPE_CANCELLED})
# A watcher whose task is quiet looks at the task's header (did it end unseen, was it purged?)
# after 1 s without events, then after 2, 4, ... up to this; events reach it from memory at once
# whatever the wait. Looking every second cost 10,000 queued RunTask calls 10,000 store reads a
# second (their server CPU on SQLite: 42 s, against 29 s with this).
MAX_QUIET_WAIT_SECONDS = 8.0

# a batched watch holds at most this many events for those that follow (see Watching._held)
MAX_HELD_EVENTS = 1000

# the largest sequence an event can have (stores keep it as a signed 64-bit integer): nothing is after it
LAST_SEQUENCE = 2**63 - 1


class Watching:
    """Watchers of tasks on this replica, at most `limits.max_watchers_per_task` per task."""

    def __init__(self, tasks: TaskStore, limits: Limits, batch_delay: float = 0.0) -> None:
        self.tasks = tasks
        self.limits = limits
        # a batched watch holds events that are not the task's end this long for those that follow
        self.batch_delay = batch_delay
        self.watchers: dict[str, int] = {}

    async def watch_task_batches(
        self, task_id: str, after_sequence: int, principal: Principal = ANONYMOUS_ADMIN
    ) -> AsyncIterator[list[task_pb2.TaskEvent]]:
        """Every event after `after_sequence`, then live ones, until the terminal event; the events
        that are ready together in one list."""
        async for batch in await self.open_watch(task_id, after_sequence, principal):
            yield batch

    async def open_watch(
        self, task_id: str, after_sequence: int, principal: Principal = ANONYMOUS_ADMIN, batched: bool = False
    ) -> AsyncIterator[list[task_pb2.TaskEvent]]:
        """Check that the task exists and `principal` may see it, then return its batches as
        follow gives them (one generator less between the log and the caller, per event)."""
        task = await visible_task(self.tasks, task_id, principal)
        self.tasks.forget_log_before(task_id, task.create_time.ToNanoseconds())
        return self.follow(task_id, after_sequence, principal, batched)

    async def follow(
        self, task_id: str, after_sequence: int, principal: Principal, batched: bool = False
    ) -> AsyncIterator[list[task_pb2.TaskEvent]]:
        """The events of a task the caller may see, after `after_sequence`, until the terminal one
        (no header is read first: the caller knows the task is theirs), in lists that one batched
        message can carry (events.in_messages). `batched`: for a watch that sends a list in one
        message, hold events that are not the end up to `batch_delay` for those that follow (one
        message, not several, for the steps of a quick task)."""
        delay = self.batch_delay if batched else 0.0
        with self._counted(task_id):
            sequence = min(after_sequence, LAST_SEQUENCE)  # a uint64 from the client; the stores hold int64
            quiet_wait = 1.0
            most = self.limits.max_event_bytes
            events = await self.tasks.wait_events(task_id, sequence, timeout=0)
            while True:
                if delay and events:
                    events = await self._held(task_id, events, delay)
                end = next((i for i, event in enumerate(events) if event.type in TERMINAL_EVENTS), None)
                for part in in_messages(events if end is None else events[: end + 1], most):
                    yield part
                if end is not None:
                    return
                if events:
                    sequence = events[-1].sequence
                    quiet_wait = 1.0
                else:
                    task = await visible_task(self.tasks, task_id, principal)
                    if task.status in TERMINAL and task.last_sequence <= sequence:
                        return
                    if task.last_sequence > sequence:  # stored, not yet here: look again soon
                        quiet_wait = 1.0
                events = await self.tasks.wait_events(task_id, sequence, timeout=quiet_wait)
                if not events:
                    quiet_wait = min(2 * quiet_wait, MAX_QUIET_WAIT_SECONDS)

    async def _held(self, task_id: str, events: list[task_pb2.TaskEvent], delay: float) -> list[task_pb2.TaskEvent]:
        """`events` and those that follow them within `delay` seconds, up to the task's end (or
        MAX_HELD_EVENTS: a message's bytes are bounded after, by in_messages)."""
        loop = asyncio.get_running_loop()
        until = loop.time() + delay
        checked = 0
        while not any(e.type in TERMINAL_EVENTS for e in events[checked:]) and len(events) < MAX_HELD_EVENTS:
            checked = len(events)
            left = until - loop.time()
            more = await self.tasks.wait_events(task_id, events[-1].sequence, timeout=left) if left > 0 else []
            if not more:
                break
            events = [*events, *more]
        return events

    @contextlib.contextmanager
    def _counted(self, task_id: str) -> Iterator[None]:
        """Count one more watcher of `task_id` while the block runs, within the limit per task."""
        if self.watchers.get(task_id, 0) >= self.limits.max_watchers_per_task:
            raise ResourceExhausted(
                f"task {task_id} has {self.limits.max_watchers_per_task} watchers, the limit",
                reason="TOO_MANY_WATCHERS",
            )
        self.watchers[task_id] = self.watchers.get(task_id, 0) + 1
        try:
            yield
        finally:
            self.watchers[task_id] -= 1
            if not self.watchers[task_id]:
                del self.watchers[task_id]
