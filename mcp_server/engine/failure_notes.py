"""FailureNotes: a background loop's failures, logged where a run of them starts and where it ends.

The replica's loops (claiming tasks, renewing leases, keeping registrations, following signals)
try again every fraction of a second while the store is down. Logging each failure printed about
150 lines a minute through an outage, which buries its cause and fills disks; the first failure
of a run is logged, the next ones at DEBUG, and the first success after them says how long the
run lasted and how many failures it held.
"""

from __future__ import annotations

import logging
import time


class FailureNotes:
    """The failures of one recurring job (`what`: "claiming tasks", "lease upkeep", ...)."""

    def __init__(self, log: logging.Logger, what: str) -> None:
        self.log = log
        self.what = what
        self._since: float | None = None
        self._count = 0

    def failed(self, error: object) -> None:
        """The job failed (again)."""
        self._count += 1
        if self._since is None:
            self._since = time.monotonic()
            self.log.warning("%s fails: %s (said again only when it works again)", self.what, error)
        else:
            self.log.debug("%s fails: %s", self.what, error)

    def worked(self) -> None:
        """The job went through: ends a run of failures, if there was one."""
        if self._since is None:
            return
        self.log.warning(
            "%s works again, after %d failure(s) over %.1f s", self.what, self._count, time.monotonic() - self._since
        )
        self._since, self._count = None, 0
