"""PausedRuns: the runs of this replica waiting out a store that refuses their writes.

A run whose checkpoint the store refuses (unreachable, or full) keeps its state in memory and
writes it again every few seconds until the store takes it (context.py). Logging every retry of
every run would print thousands of lines a minute through a long outage and bury its cause, so
the outage is logged where it starts and where it ends, with how many runs it held and for how
long; each run's own pause is logged at DEBUG. The count is a metric (`mcp_tasks_paused`).
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger(__name__)


class PausedRuns:
    """Which runs wait to write, since when; one outage is the time at least one does."""

    def __init__(self) -> None:
        self._since: dict[str, float] = {}
        self._outage_started = 0.0
        self._most = 0

    def __len__(self) -> int:
        return len(self._since)

    def paused(self, task_id: str, error: Exception) -> None:
        """The store refused a write of `task_id`'s run (again, or for the first time)."""
        if task_id in self._since:
            return
        now = time.monotonic()
        if not self._since:
            self._outage_started, self._most = now, 0
            log.warning("the store refuses writes; runs keep their state and retry every 2 s: %s", error)
        self._since[task_id] = now
        self._most = max(self._most, len(self._since))
        log.debug("task %s paused: %s", task_id, error)

    def resumed(self, task_id: str) -> None:
        """A write of `task_id`'s run went through after the store refused it."""
        since = self._since.pop(task_id, None)
        if since is None:
            return
        now = time.monotonic()
        log.debug("task %s resumed after %.1f s", task_id, now - since)
        if not self._since:
            log.warning(
                "the store takes writes again: %d run(s) paused, for %.1f s in all",
                self._most,
                now - self._outage_started,
            )

    def left(self, task_id: str) -> None:
        """`task_id`'s run stopped waiting without writing (the server stops, the lease went)."""
        self._since.pop(task_id, None)
