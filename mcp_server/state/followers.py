"""Event logs followed in memory for this process's watchers, shared by both stores.

A watcher follows a task's log first and reads the store second: whatever is written after
it follows reaches it from memory (the writes of this process, or on Redis the replica's
XREAD), whatever was written before is in the read, and events that arrive ahead of a gap are
held until the gap is filled. So a watcher sees every event once, in order, and a log that
this process writes costs no store read per event.

A log keeps its latest events only (KEPT_EVENTS, KEPT_BYTES): a task's log may grow to
gigabytes (10,000 progress events of up to 1 MB per attempt, attempts without end), and one
watcher made this process hold all of it. A watcher further behind than what is kept reads the
store, as one that starts late does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from mcp_sdk.proto import task_pb2
from mcp_server.errors import McpError

KEPT_EVENTS = 1000
KEPT_BYTES = 8 * 1024 * 1024


class FollowedLog:
    """What this process knows of one task's event log, after `start`: `events` hold the
    sequences start + 1, start + 2, ... in order, the latest KEPT_EVENTS (KEPT_BYTES) of them."""

    def __init__(self, after_sequence: int) -> None:
        self.start = after_sequence
        self.events: list[task_pb2.TaskEvent] = []
        self.kept_bytes = 0
        self.waiters: set[asyncio.Future[None]] = set()
        self.watchers = 0
        # idle from the start: a log whose first read held the task's end is never waited on
        self.idle_since = time.monotonic()
        self.error: McpError | None = None
        self.ahead: dict[int, task_pb2.TaskEvent] = {}  # arrived before the events they follow
        # a read of the store that will fill the log from `start` is under way (see Followers.has_gap)
        self.reading = False

    @property
    def last_sequence(self) -> int:
        return self.events[-1].sequence if self.events else self.start

    def newer_than(self, after_sequence: int) -> bool:
        return bool(self.events) and self.events[-1].sequence > after_sequence

    def add(self, events: Sequence[task_pb2.TaskEvent]) -> bool:
        """Append the events that continue this log; ignore ones already here, hold ones that
        arrive ahead of a gap. True when the log grew."""
        last = self.last_sequence
        for event in events:
            if event.sequence > last:
                self.ahead[event.sequence] = event
        grown = False
        while (following := self.ahead.pop(self.last_sequence + 1, None)) is not None:
            self.events.append(following)
            self.kept_bytes += following.ByteSize()
            grown = True
        if grown:
            self._trim()
            self.error = None
            for waiter in self.waiters:
                if not waiter.done():
                    waiter.set_result(None)
        return grown

    def after(self, after_sequence: int) -> list[task_pb2.TaskEvent] | None:
        """The events after `after_sequence`, or None when some of them are not kept here."""
        if after_sequence < self.start:
            return None
        return self.events[after_sequence - self.start :]

    def _trim(self) -> None:
        """Forget the oldest events past KEPT_EVENTS or KEPT_BYTES (the newest is always kept)."""
        drop = max(0, len(self.events) - KEPT_EVENTS)
        kept = self.kept_bytes - sum(e.ByteSize() for e in self.events[:drop])
        while kept > KEPT_BYTES and drop < len(self.events) - 1:
            kept -= self.events[drop].ByteSize()
            drop += 1
        if drop:
            self.start = self.events[drop - 1].sequence
            del self.events[:drop]
            self.kept_bytes = kept

    def failed(self, error: McpError) -> None:
        """The source of this log cannot be read right now; waiters time out with `error`."""
        self.error = error


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Followers:
    """The logs this process follows, by key. A log nobody waits on is kept `idle_seconds`,
    so a watcher going from one wait to the next does not start over."""

    PRUNE_EVERY_SECONDS = 1.0

    def __init__(self, idle_seconds: float = 5.0) -> None:
        self.logs: dict[str, FollowedLog] = {}
        self.idle_seconds = idle_seconds
        self._pruned_at = 0.0

    def covers(self, key: str, after_sequence: int) -> bool:
        """True when every event of `key` after `after_sequence` reaches this process's memory."""
        log = self.logs.get(key)
        return log is not None and log.start <= after_sequence

    def follow(self, key: str, after_sequence: int, fresh: bool = False) -> tuple[FollowedLog, bool]:
        """The log of `key`, followed from `after_sequence` if it is new (the bool says so).
        `fresh`: the task was just made, so a log held of it is an earlier task's (same id): replaced."""
        log = self.logs.get(key)
        if log is not None and not fresh:
            return log, False
        if log is not None:
            self.forget(key)
        log = self.logs[key] = FollowedLog(after_sequence)
        return log, True

    def forget(self, key: str, error: McpError | None = None) -> None:
        """Drop the log of `key` (its task is gone); whoever waits on it gets `error` if given,
        else what a wait that ran out gets."""
        log = self.logs.pop(key, None)
        if log is not None:
            if error is not None:
                log.failed(error)
            for waiter in log.waiters:
                _resolve(waiter)

    def forget_before(self, key: str, created_ns: int) -> None:
        """Drop the log of `key` if it holds events older than `created_ns` (nanoseconds since the
        epoch): they are an earlier task's of the same id (a task's events are never older than
        its creation)."""
        log = self.logs.get(key)
        if log is not None and log.events and log.events[0].time.ToNanoseconds() < created_ns:
            self.forget(key)

    def unfollow(self, key: str) -> None:
        """Stop following `key`, unless someone waits on it: the read that was to fill its log
        stopped at a page's end, so the log cannot yet continue from the store's end."""
        log = self.logs.get(key)
        if log is not None and log.watchers == 0 and not log.waiters:
            del self.logs[key]

    def has_gap(self, key: str) -> bool:
        """Whether `key` holds events that arrived ahead of ones it has not seen yet, with no
        read of the store under way that will bring those (see `reading`)."""
        log = self.logs.get(key)
        return log is not None and bool(log.ahead) and not log.reading

    def add(self, key: str, events: Sequence[task_pb2.TaskEvent]) -> None:
        """Events of `key` read from the store, or written by this process."""
        log = self.logs.get(key)
        if log is not None and events:
            log.add(events)

    async def wait(self, key: str, after_sequence: int, timeout: float) -> list[task_pb2.TaskEvent] | None:
        """Events of a followed log after `after_sequence`, waiting up to `timeout` for one; []
        on timeout; None when the log starts after that point (the caller reads the store)."""
        log = self.logs[key]
        log.watchers += 1
        log.idle_since = 0.0
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        log.waiters.add(waiter)
        timer = None
        try:
            if not log.newer_than(after_sequence):
                # The timer resolves the waiter rather than cancelling the task (asyncio.timeout):
                # one timer and no Timeout object or cancel-and-uncancel on the watch of each event.
                timer = loop.call_later(timeout, _resolve, waiter)
                await waiter
                if not log.newer_than(after_sequence):  # the timer, not an event
                    if log.error is not None:
                        raise log.error
                    return []
            return log.after(after_sequence)
        finally:
            if timer is not None:
                timer.cancel()
            log.waiters.discard(waiter)
            log.watchers -= 1
            if log.watchers == 0:
                log.idle_since = time.monotonic()

    def prune(self) -> list[str]:
        """Forget the logs nobody waited on for `idle_seconds`; returns their keys. Called on every
        wait, it looks at the logs at most once a second: under load there are thousands of them
        (each finished task's is kept a while), and scanning them per event cost 13% of the CPU."""
        now = time.monotonic()
        if now - self._pruned_at < self.PRUNE_EVERY_SECONDS:
            return []
        self._pruned_at = now
        cutoff = now - self.idle_seconds
        gone = [k for k, log in self.logs.items() if log.watchers == 0 and 0 < log.idle_since < cutoff]
        for key in gone:
            del self.logs[key]
        return gone
