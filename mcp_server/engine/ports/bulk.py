"""The bulk actions port: actions that cancel or rerun many tasks, and which of them are due to be
worked on.

A running action's due time is also its lease, as a schedule's is: claiming it moves its due time
to the end of the lease and bumps its version, so no other replica takes it meanwhile, and a
replica that dies holding it hands it over when that time comes. Every write names the version it
read (compare-and-set): a replica whose lease passed to another, or an action aborted meanwhile,
writes nothing and learns so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class BulkRecord:
    """A stored action: a serialized BulkAction (its state and counts), where its work goes on,
    and whether it acts as an admin (its owner was one when it started)."""

    action_id: str
    owner: str
    data: bytes
    cursor: str = ""  # a ListTasks page token, or the index of the next task id ("" at the start)
    version: int = 0  # bumped by every write and claim
    running: bool = True
    admin: bool = False
    request_id: str = ""


class BulkActionStore(Protocol):
    async def create_bulk_action(self, record: BulkRecord, max_running: int) -> tuple[BulkRecord, bool]:
        """Store a new running action, due now, and return it (True); the action an earlier
        request with the same owner and request_id made (False). None made when the owner has
        `max_running` running already: raises ResourceExhausted (BULK_ACTIONS_RUNNING)."""
        ...

    async def get_bulk_action(self, action_id: str) -> BulkRecord | None: ...

    async def list_bulk_actions(self, owner: str | None, before: str, limit: int) -> list[BulkRecord]:
        """Up to `limit` actions with ids before `before` ("" from the newest), newest first;
        only `owner`'s unless None (ids sort by creation time)."""
        ...

    async def claim_bulk_actions(self, now_ms: int, lease_ms: int, limit: int) -> list[BulkRecord]:
        """Up to `limit` running actions due by `now_ms`, each leased until now_ms + lease_ms."""
        ...

    async def save_bulk_action(self, record: BulkRecord, due_ms: int) -> BulkRecord | None:
        """Write `record` (its data, cursor and whether it runs) if the stored version is still
        `record.version`, due at `due_ms` while it runs; the record as stored (version bumped),
        or None if the version moved (claimed elsewhere, aborted) or the action is gone."""
        ...

    async def purge_bulk_actions(self, ended_before_ms: int, limit: int) -> int:
        """Delete up to `limit` actions that ended before `ended_before_ms`; how many."""
        ...
