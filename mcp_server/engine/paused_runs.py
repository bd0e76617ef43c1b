"""PausedRuns: the runs of this replica waiting out a store that refuses their calls.

A run whose checkpoint the store refuses (unreachable, or full) keeps its state in memory and
writes it again every few seconds until the store takes it; a step's own store calls (the step
cache, rate-limit units) wait the same way, so that a store outage pauses a task and never fails
it. Logging every retry of every run would print thousands of lines a minute through a long
outage and bury its cause, so the outage is logged where it starts and where it ends, with how
many runs it held and for how long; each run's own pause is logged at DEBUG. The count is a
metric (`mcp_tasks_paused`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from mcp_server.errors import Unavailable

log = logging.getLogger(__name__)
T = TypeVar("T")
FIRST_RETRY, LAST_RETRY = 0.05, 2.0  # seconds between asks: doubling from the first to the last


class PausedRuns:
    """Which runs wait for the store, since when; one outage is the time at least one does."""

    def __init__(self) -> None:
        self._since: dict[str, float] = {}
        self._calls: dict[str, int] = {}  # a run's calls waiting now (parallel branches wait apart)
        self._outage_started = 0.0
        self._most = 0

    def __len__(self) -> int:
        return len(self._since)

    async def call(
        self, task_id: str, make: Callable[[], Awaitable[T]], refused: Callable[[], None] = lambda: None
    ) -> T:
        """`make()`'s answer, asking again while the store refuses it (Unavailable: down, or
        full); `refused` is told each time it does."""
        delay, waiting = FIRST_RETRY, False
        try:
            while True:
                try:
                    answer = await make()
                except Unavailable as exc:
                    refused()
                    if not waiting:
                        waiting = True
                        self._pause(task_id, exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, LAST_RETRY)
                    continue
                if waiting:
                    waiting = False
                    self._resume(task_id, answered=True)
                return answer
        finally:
            if waiting:  # stopped waiting unanswered: the server stops, the task was cancelled
                self._resume(task_id, answered=False)

    def _pause(self, task_id: str, error: Exception) -> None:
        self._calls[task_id] = self._calls.get(task_id, 0) + 1
        if task_id in self._since:
            return
        now = time.monotonic()
        if not self._since:
            self._outage_started, self._most = now, 0
            log.warning("the store refuses calls; runs keep their state and ask again every 2 s: %s", error)
        self._since[task_id] = now
        self._most = max(self._most, len(self._since))
        log.debug("task %s paused: %s", task_id, error)

    def _resume(self, task_id: str, answered: bool) -> None:
        self._calls[task_id] -= 1
        if self._calls[task_id]:
            return
        del self._calls[task_id]
        since = self._since.pop(task_id)
        now = time.monotonic()
        log.debug("task %s resumed after %.1f s", task_id, now - since)
        if not self._since and answered:
            log.warning(
                "the store answers again: %d run(s) paused, for %.1f s in all", self._most, now - self._outage_started
            )
