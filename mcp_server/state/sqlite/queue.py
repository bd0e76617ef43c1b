"""The queue of the embedded store: creating tasks, claiming them under leases, cancelling them
(see TaskQueue in engine/ports). The queue is the `queued` column, read in priority order."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator, Mapping, Sequence

from mcp_sdk.proto import task_pb2
from mcp_server.engine.ports import NO_SHARE, GroupMember, Kept, LeaseReply, OwnerShare, QueueGroup, RequestedTask
from mcp_server.errors import NotFound
from mcp_server.state.common import (
    ACTIVE,
    MAX_OWNERS_COUNTED,
    QUEUE_LENGTH_CACHE_SECONDS,
    TERMINAL,
    CreateTask,
    QueueFull,
    RequestIdReused,
    assemble,
    check_owner_share,
    fixed_part,
    live_part,
    mark_cancelled,
    now_seconds,
    owner_to_count,
    queue_deadline,
    queued_bytes,
    request_task_id,
    rerun_dedupe_key,
)
from mcp_server.state.sqlite.database import SqliteDatabase


class SqliteQueue(CreateTask):
    """TaskQueue on SQLite."""

    def __init__(self, db: SqliteDatabase) -> None:
        self.db = db
        # (when counted, queued tasks then plus those this store queued since); store thread only
        self._queue_count: tuple[float, int] = (0.0, 0)
        # the same per owner, for the owners counted while the queue was long enough to matter
        self._owner_counts: dict[str, tuple[float, int, int]] = {}  # when counted, tasks, bytes

    async def create_leased(
        self,
        task: task_pb2.Task,
        event: task_pb2.TaskEvent,
        holder: str,
        lease_seconds: float,
        max_queue: int = 0,
        fingerprint: str = "",
        values: Mapping[str, bytes] | None = None,
        kept: Kept | None = None,
        group: QueueGroup | None = None,
        follow: bool = False,
        share: OwnerShare = NO_SHARE,
    ) -> tuple[task_pb2.Task, bool, int]:
        group = group or QueueGroup.of_owner(task.owner)
        dedupe = rerun_dedupe_key(task.request_id) if kept and task.request_id else task.request_id
        if task.request_id:  # the idempotency key: the task's own id, in its owner's namespace
            task.task_id = event.task_id = request_task_id(task.owner, dedupe)

        fixed = fixed_part(task)
        size = queued_bytes(fixed, values)

        def insert(db: sqlite3.Connection) -> tuple[task_pb2.Task, bool, int]:
            if task.request_id:
                row = db.execute(
                    "SELECT fixed, live, request_fp FROM tasks WHERE owner=? AND request_id=?",
                    (task.owner, dedupe),
                ).fetchone()
                if row is not None:
                    existing = assemble(row[0], row[1])
                    if row[2] != fingerprint:
                        raise RequestIdReused(task.request_id, existing.task_id)
                    return existing, False, 0
            if not holder:
                self._room_in_queue(db, task.owner, max_queue, share, size)
            start = holder and not (group.max_running and running_in_group(db, group.name) >= group.max_running)
            leased = (0, holder, 1, now_seconds() + lease_seconds) if start else (1, None, 0, None)
            with db:
                inserted = db.execute(
                    "INSERT INTO tasks (task_id, workflow_id, owner, status, priority,"
                    " request_id, request_fp, fixed, live, "
                    "last_sequence, queued, lease_owner, lease_token, lease_expires, rerun_of, fair_group, fair_cap,"
                    " queued_bytes, due_at, created_us) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        task.task_id,
                        task.workflow_id,
                        task.owner,
                        task.status,
                        task.priority,
                        dedupe or None,
                        fingerprint,
                        fixed,
                        live_part(task),
                        task.last_sequence,
                        *leased,
                        kept.source_task_id if kept else None,
                        group.name,
                        group.max_running,
                        size,
                        None if start else queue_deadline(task),  # a queued task's due time: its deadline
                        task.create_time.ToMicroseconds(),
                    ),
                )
                if task.labels:  # the index ListTasks reads a label from
                    db.executemany(
                        "INSERT INTO task_labels VALUES (?,?,?,?)",
                        [(key, value, inserted.lastrowid, task.task_id) for key, value in task.labels.items()],
                    )
                if kept:
                    _copy_kept(db, task.task_id, kept)
                db.execute(
                    "INSERT INTO events VALUES (?,?,?)", (task.task_id, event.sequence, event.SerializeToString())
                )
                db.executemany(
                    "INSERT OR IGNORE INTO task_values VALUES (?,?,?)",
                    [(task.task_id, d, data) for d, data in (values or {}).items()],
                )
            if not start:
                taken, count = self._queue_count
                self._queue_count = (taken, count + 1)
                if task.owner in self._owner_counts:
                    taken, count, held = self._owner_counts[task.owner]
                    self._owner_counts[task.owner] = (taken, count + 1, held + size)
            return task, True, 1 if start else 0

        created = await self.db.run(insert)
        if created[1]:
            # a log held of this id is an earlier task's (deleted or purged, then made again)
            self.db.followers.forget(task.task_id)
            if follow:  # every write is this process's: the log is complete from here on
                self.db.followers.follow(task.task_id, 0)
            self.db.written(task.task_id, [event])
        return created

    async def task_of_request(self, owner: str, request_id: str, rerun: bool = False) -> RequestedTask | None:
        rows = await self.db.rows(
            "SELECT fixed, live, request_fp FROM tasks WHERE owner=? AND request_id=?",
            (owner, rerun_dedupe_key(request_id) if rerun else request_id),
        )
        return RequestedTask(assemble(rows[0][0], rows[0][1]), rows[0][2] or "") if rows else None

    def _room_in_queue(self, db: sqlite3.Connection, owner: str, max_queue: int, share: OwnerShare, size: int) -> None:
        """Raise QueueFull or OwnerQueueFull if a task of `owner` that stores `size` bytes may not
        be queued now. An owner's tasks are counted only when its share could be reached
        (see owner_to_count)."""
        if not (max_queue or share.tasks or share.bytes):
            return
        queued = self._queued(db)
        if max_queue and queued >= max_queue:
            raise QueueFull(max_queue)
        if owner_to_count(share, queued, size):
            check_owner_share(owner, share, *self._owner_queued(db, owner), size)

    def _owner_queued(self, db: sqlite3.Connection, owner: str) -> tuple[int, int]:
        """`owner`'s queued tasks and their bytes, counted as _queued counts them all
        (tasks_queued_bytes_by_owner: the index holds both)."""
        taken, count, held = self._owner_counts.get(owner, (0.0, 0, 0))
        if time.monotonic() - taken > QUEUE_LENGTH_CACHE_SECONDS:
            count, held = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(queued_bytes), 0) FROM tasks WHERE owner=? AND queued=1", (owner,)
            ).fetchone()
            if len(self._owner_counts) >= MAX_OWNERS_COUNTED:
                self._owner_counts.clear()
            self._owner_counts[owner] = (time.monotonic(), int(count), int(held))
        return count, held

    def _queued(self, db: sqlite3.Connection) -> int:
        """Queued tasks, counted at most every QUEUE_LENGTH_CACHE_SECONDS, plus what this store
        queued since (on the store's thread, so the limit holds exactly for this process)."""
        taken, count = self._queue_count
        if time.monotonic() - taken > QUEUE_LENGTH_CACHE_SECONDS:
            count = int(db.execute("SELECT COUNT(*) FROM tasks WHERE queued=1").fetchone()[0])
            self._queue_count = (time.monotonic(), count)
        return count

    async def claim_task(self, owner: str, lease_seconds: float) -> tuple[task_pb2.Task, int] | None:
        claimed = await self.claim_tasks(owner, lease_seconds, 1)
        return claimed[0] if claimed else None

    async def claim_tasks(self, owner: str, lease_seconds: float, count: int) -> list[tuple[task_pb2.Task, int]]:
        """Highest priority first; within a priority, round robin across groups (the group whose
        turn is oldest gives its oldest task and goes to the back); a group at its cap is blocked
        until one of its running tasks stops counting (see database.py's triggers)."""

        def claim(db: sqlite3.Connection) -> list[tuple[task_pb2.Task, int]]:
            claimed: list[tuple[task_pb2.Task, int]] = []
            expires = now_seconds() + lease_seconds
            with db:
                for _ in range(1000):  # bounded: lapsed and blocked turns are passed over
                    if len(claimed) >= count:
                        break
                    turn = db.execute(
                        "SELECT priority, grp FROM fair_turns WHERE blocked=0 ORDER BY priority DESC, turn LIMIT 1"
                    ).fetchone()
                    if turn is None:
                        break
                    row = db.execute(
                        "SELECT task_id, fixed, live, lease_token, fair_cap FROM tasks"
                        " WHERE queued=1 AND fair_group=? AND priority=? ORDER BY seq LIMIT 1",
                        (turn[1], turn[0]),
                    ).fetchone()
                    if row is None:
                        db.execute("DELETE FROM fair_turns WHERE priority=? AND grp=?", turn)
                        continue
                    if row[4] and running_in_group(db, turn[1]) >= row[4]:
                        db.execute("UPDATE fair_turns SET blocked=1 WHERE priority=? AND grp=?", turn)
                        continue
                    token = int(row[3]) + 1
                    db.execute(
                        "UPDATE tasks SET queued=0, lease_owner=?, lease_token=?, lease_expires=?, due_at=NULL"
                        " WHERE task_id=?",
                        (owner, token, expires, row[0]),
                    )
                    db.execute(
                        "UPDATE fair_turns SET turn=(SELECT MAX(turn) + 1 FROM fair_turns) WHERE priority=? AND grp=?",
                        turn,
                    )
                    claimed.append((assemble(row[1], row[2]), token))
            return claimed

        return await self.db.run(claim)

    async def group_members(self, group: QueueGroup) -> list[GroupMember]:
        rows = await self.db.rows(
            "SELECT task_id, status, lease_expires IS NOT NULL FROM tasks"
            " WHERE fair_group=? AND fair_cap > 0 AND status IN (?,?,?)",
            (group.name, task_pb2.TASK_STATUS_PENDING, task_pb2.TASK_STATUS_RUNNING, task_pb2.TASK_STATUS_WAITING),
        )
        return [GroupMember(str(r[0]), int(r[1]), bool(r[2])) for r in rows]

    async def claim_waiting(self, task_id: str, owner: str, lease_seconds: float) -> tuple[task_pb2.Task, int] | None:
        def claim(db: sqlite3.Connection) -> tuple[task_pb2.Task, int] | None:
            row = db.execute(
                "SELECT fixed, live, lease_token FROM tasks WHERE task_id=? AND status=? AND lease_expires IS NULL",
                (task_id, task_pb2.TASK_STATUS_WAITING),
            ).fetchone()
            if row is None:
                return None
            token = int(row[2]) + 1
            with db:
                db.execute(
                    "UPDATE tasks SET queued=0, lease_owner=?, lease_token=?, lease_expires=?, due_at=NULL"
                    " WHERE task_id=?",
                    (owner, token, now_seconds() + lease_seconds, task_id),
                )
            return assemble(row[0], row[1]), token

        return await self.db.run(claim)

    async def renew_leases(
        self, leases: Mapping[str, int], lease_seconds: float, fresh: bool = False
    ) -> AsyncIterator[LeaseReply]:
        if not leases:
            return
        expires = now_seconds() + lease_seconds

        def renew(db: sqlite3.Connection) -> LeaseReply:
            renewed: list[str] = []
            lost: list[str] = []
            with db:
                for task_id, token in leases.items():
                    cursor = db.execute(
                        "UPDATE tasks SET lease_expires=? WHERE task_id=?"
                        " AND lease_token=? AND lease_expires IS NOT NULL",
                        (expires, task_id, token),
                    )
                    (renewed if cursor.rowcount == 1 else lost).append(task_id)
            return LeaseReply(renewed, lost)

        yield await self.db.run(renew)

    async def release_expired_leases(self) -> int:
        # WAITING too: a signal leases a waiting task to the replica it reached, to resume there
        # without a trip through the queue (waits.py); that replica may die before its run starts
        leased = (*ACTIVE, task_pb2.TASK_STATUS_WAITING)
        return await self.db.write(
            # the token changes as the lease is released: its holder's later writes are refused
            f"UPDATE tasks SET queued=1, lease_expires=NULL, lease_owner=NULL, lease_token=lease_token+1"
            f" WHERE lease_expires IS NOT NULL "
            f"AND lease_expires <= ? AND status IN ({','.join(str(s) for s in leased)})",
            (now_seconds(),),
        )

    async def queue_depth_by_priority(self) -> dict[int, int]:
        rows = await self.db.rows("SELECT priority, COUNT(*) FROM tasks WHERE queued=1 GROUP BY priority")
        return {int(r[0]): int(r[1]) for r in rows}

    async def queue_length(self) -> int:
        rows = await self.db.rows("SELECT COUNT(*) FROM tasks WHERE queued=1")
        return int(rows[0][0])

    async def cancel_pending(self, task_id: str, event: task_pb2.TaskEvent) -> task_pb2.Task | None:
        def cancel(db: sqlite3.Connection) -> task_pb2.Task | None:
            row = db.execute(
                "SELECT fixed, live FROM tasks WHERE task_id=? AND queued=1 AND status=?",
                (task_id, task_pb2.TASK_STATUS_PENDING),
            ).fetchone()
            if row is None:
                return None
            task = assemble(row[0], row[1])
            numbered = mark_cancelled(task, event)
            with db:
                db.execute(
                    "UPDATE tasks SET live=?, status=?, last_sequence=?, queued=0, finished_at=?, due_at=NULL"
                    " WHERE task_id=?",
                    (live_part(task), task.status, task.last_sequence, now_seconds(), task_id),
                )
                db.execute(
                    "INSERT INTO events VALUES (?,?,?)", (task_id, numbered.sequence, numbered.SerializeToString())
                )
            events.append(numbered)
            return task

        events: list[task_pb2.TaskEvent] = []
        cancelled = await self.db.run(cancel)
        self.db.written(task_id, events)
        return cancelled

    async def request_cancel(self, task_id: str, reason: str) -> bool:
        return bool(
            await self.db.write(
                "UPDATE tasks SET cancel_reason=? WHERE task_id=? AND status NOT IN (?, ?, ?)",
                (reason, task_id, *TERMINAL),
            )
        )

    async def cancel_requests(self, task_ids: Sequence[str]) -> dict[str, str]:
        if not task_ids:
            return {}
        rows = await self.db.rows(
            f"SELECT task_id, cancel_reason FROM tasks WHERE cancel_reason IS NOT NULL "
            f"AND task_id IN ({','.join('?' * len(task_ids))})",
            list(task_ids),
        )
        return {str(r[0]): str(r[1]) for r in rows}

    async def cancel_nudges(self) -> AsyncIterator[str]:
        """None on SQLite: the replicas of one file share a process, and their poll finds each request."""
        return
        yield  # an async generator that ends at once


def running_in_group(db: sqlite3.Connection, group: str) -> int:
    """How many tasks of a capped group count against its cap: held by a replica, not waiting."""
    row = db.execute(
        "SELECT COUNT(*) FROM tasks WHERE fair_group=? AND fair_cap > 0 AND status IN (?,?)"
        " AND lease_expires IS NOT NULL",
        (group, task_pb2.TASK_STATUS_PENDING, task_pb2.TASK_STATUS_RUNNING),
    ).fetchone()
    return int(row[0])


def _copy_kept(db: sqlite3.Connection, task_id: str, kept: Kept) -> None:
    """A rerun's kept step records, and links to the large values they (and its input) refer to:
    each to the task that holds the bytes (the source, or the task the source links to), so a
    value is stored once however many reruns share it."""
    db.executemany("INSERT INTO steps VALUES (?,?,?,?)", [(task_id, r.index, r.path, r.data) for r in kept.records])
    source = kept.source_task_id
    if db.execute("SELECT 1 FROM tasks WHERE task_id=?", (source,)).fetchone() is None:
        raise _gone(source, "the task")
    # A value the source does not link to is its own (a task and its values go together). Not
    # looked up in task_values: a key lookup there reads the whole value, in an index b-tree.
    links = dict(db.execute("SELECT digest, origin FROM value_links WHERE task_id=?", (source,)).fetchall())
    db.executemany(
        "INSERT OR IGNORE INTO value_links VALUES (?,?,?)",
        [(task_id, digest, links.get(digest, source)) for digest in kept.digests],
    )


def _gone(source: str, what: str) -> NotFound:
    return NotFound(
        f"task {source}: {what} was purged meanwhile", reason="TASK_NOT_FOUND", metadata={"task_id": source}
    )
