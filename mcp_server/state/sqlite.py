"""The embedded store: one SQLite file, used from one worker thread so the event loop never blocks.

Every operation is one function run on that thread, so a checkpoint (the live header, the
changed step records, new values, events) is one transaction and one hop off the loop. One
process owns the file. Watchers in this process are woken by an in-memory condition when a
task's log grows.

Tables: `tasks` (a row per task: its fixed and live parts, the columns listing and the queue
need), `steps` (a row per step record, keyed by task and index), `task_values` (large values
by task and SHA-256), `events`, `workflows`, `protocols`, `breakers`, `meta` (the layout).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from mcp_sdk.proto import registry_pb2, task_pb2, workflow_pb2
from mcp_server.engine.context import now
from mcp_server.engine.ports import CapacityRequest, Checkpoint, StepRecord, TaskFilter, TaskPage
from mcp_server.errors import LeaseLost, StartupError, Unavailable
from mcp_server.state.common import (
    ACTIVE,
    EVENTS_PAGE,
    LAYOUT_MISMATCH,
    LAYOUT_VERSION,
    QUEUE_LENGTH_CACHE_SECONDS,
    TERMINAL,
    CreateTask,
    QueueFull,
    RequestIdReused,
    assemble,
    decode_position,
    decode_token,
    encode_token,
    fixed_part,
    live_part,
    mark_cancelled,
    now_seconds,
    request_task_id,
)
from mcp_server.state.followers import Followers
from mcp_server.state.ledger import MemoryLedger
from mcp_server.state.store_thread import StoreThread

T = TypeVar("T")
SCHEMA = """
PRAGMA journal_mode=WAL;
PRAGMA synchronous=NORMAL;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS workflows (
  workflow_id TEXT NOT NULL, version INTEGER NOT NULL, data BLOB NOT NULL,
  PRIMARY KEY (workflow_id, version));
CREATE TABLE IF NOT EXISTS tasks (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, task_id TEXT NOT NULL UNIQUE, workflow_id TEXT NOT NULL,
  owner TEXT NOT NULL DEFAULT '', status INTEGER NOT NULL, priority INTEGER NOT NULL,
  request_id TEXT, request_fp TEXT NOT NULL DEFAULT '', fixed BLOB NOT NULL, live BLOB NOT NULL,
  last_sequence INTEGER NOT NULL, queued INTEGER NOT NULL DEFAULT 0, lease_owner TEXT,
  lease_token INTEGER NOT NULL DEFAULT 0, lease_expires REAL, finished_at REAL, cancel_reason TEXT);
CREATE UNIQUE INDEX IF NOT EXISTS tasks_request ON tasks (owner, request_id);
CREATE INDEX IF NOT EXISTS tasks_queue ON tasks (queued, priority DESC, seq);
CREATE INDEX IF NOT EXISTS tasks_lease ON tasks (lease_expires);
CREATE INDEX IF NOT EXISTS tasks_finished ON tasks (finished_at);
CREATE INDEX IF NOT EXISTS tasks_by_owner ON tasks (owner, status, seq);
CREATE INDEX IF NOT EXISTS tasks_by_workflow ON tasks (workflow_id, status, seq);
CREATE INDEX IF NOT EXISTS tasks_by_status ON tasks (status, seq);
CREATE TABLE IF NOT EXISTS steps (
  task_id TEXT NOT NULL, idx INTEGER NOT NULL, path TEXT NOT NULL, data BLOB NOT NULL,
  PRIMARY KEY (task_id, idx)) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS steps_by_path ON steps (task_id, path);
CREATE TABLE IF NOT EXISTS task_values (
  task_id TEXT NOT NULL, digest TEXT NOT NULL, data BLOB NOT NULL, PRIMARY KEY (task_id, digest)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
  task_id TEXT NOT NULL, sequence INTEGER NOT NULL, data BLOB NOT NULL,
  PRIMARY KEY (task_id, sequence)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS protocol_instances (
  name TEXT NOT NULL, address TEXT NOT NULL, data BLOB NOT NULL, PRIMARY KEY (name, address));
CREATE TABLE IF NOT EXISTS breakers (protocol TEXT PRIMARY KEY, state TEXT NOT NULL);
"""


class SqliteStore(CreateTask):
    """Store backed by one SQLite file (see Store in engine/ports.py for the contract)."""

    def __init__(self, db: sqlite3.Connection, worker: StoreThread, retention_seconds: float) -> None:
        self.db = db
        self.worker = worker
        self.retention_seconds = retention_seconds
        self._followers = Followers()
        self._ledger = MemoryLedger()
        # (when counted, queued tasks then plus those this store queued since); store thread only
        self._queue_count: tuple[float, int] = (0.0, 0)

    @classmethod
    async def open(cls, path: str, retention_seconds: float = 7 * 24 * 3600.0) -> SqliteStore:
        """Open (or create) the file at `path` (":memory:" or "" for a private in-memory one).
        Refuses a file written with another state layout."""
        worker = StoreThread("sqlite-store")
        try:
            db = await worker.run(lambda: _connect(path))
        except BaseException:
            await worker.stop()
            raise
        return cls(db, worker, retention_seconds)

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work` on the store's thread; a database error is UNAVAILABLE, and leaves nothing half done."""

        def guarded(db: sqlite3.Connection) -> T:
            try:
                return work(db)
            except sqlite3.Error as exc:
                if db.in_transaction:
                    db.rollback()
                raise Unavailable(f"sqlite store: {exc}") from exc

        return await self.worker.run(lambda: guarded(self.db))

    # ---- workflows ------------------------------------------------------------------------
    async def create_workflow(self, workflow: workflow_pb2.Workflow) -> workflow_pb2.Workflow:
        stored = workflow_pb2.Workflow()
        stored.CopyFrom(workflow)
        stored.create_time.CopyFrom(now())

        def insert(db: sqlite3.Connection) -> workflow_pb2.Workflow:
            with db:
                row = db.execute(
                    "SELECT COALESCE(MAX(version), 0) FROM workflows WHERE workflow_id=?", (workflow.workflow_id,)
                ).fetchone()
                stored.version = int(row[0]) + 1
                db.execute(
                    "INSERT INTO workflows VALUES (?, ?, ?)",
                    (stored.workflow_id, stored.version, stored.SerializeToString()),
                )
            return stored

        return await self._run(insert)

    async def get_workflow(self, workflow_id: str, version: int = 0) -> workflow_pb2.Workflow | None:
        args: tuple[object, ...]
        if version:
            sql, args = "SELECT data FROM workflows WHERE workflow_id=? AND version=?", (workflow_id, version)
        else:
            sql, args = "SELECT data FROM workflows WHERE workflow_id=? ORDER BY version DESC LIMIT 1", (workflow_id,)
        rows = await self._rows(sql, args)
        return workflow_pb2.Workflow.FromString(rows[0][0]) if rows else None

    async def latest_workflow_version(self, workflow_id: str) -> int:
        rows = await self._rows("SELECT COALESCE(MAX(version), 0) FROM workflows WHERE workflow_id=?", (workflow_id,))
        return int(rows[0][0])

    async def list_workflows(self, page_size: int, page_token: str) -> tuple[list[workflow_pb2.Workflow], str]:
        after = decode_token(page_token)
        rows = await self._rows(
            "SELECT w.data FROM workflows w JOIN (SELECT workflow_id, MAX(version) v FROM workflows "
            "WHERE workflow_id > ? GROUP BY workflow_id) l ON w.workflow_id=l.workflow_id AND w.version=l.v "
            "ORDER BY w.workflow_id LIMIT ?",
            (after, page_size + 1),
        )
        workflows = [workflow_pb2.Workflow.FromString(r[0]) for r in rows[:page_size]]
        token = encode_token(workflows[-1].workflow_id) if len(rows) > page_size else ""
        return workflows, token

    async def delete_workflow(self, workflow_id: str) -> int:
        return await self._write("DELETE FROM workflows WHERE workflow_id=?", (workflow_id,))

    # ---- tasks ----------------------------------------------------------------------------
    async def create_leased(
        self,
        task: task_pb2.Task,
        event: task_pb2.TaskEvent,
        holder: str,
        lease_seconds: float,
        max_queue: int = 0,
        fingerprint: str = "",
        values: Mapping[str, bytes] | None = None,
    ) -> tuple[task_pb2.Task, bool, int]:
        if task.request_id:  # the idempotency key: the task's own id, in its owner's namespace
            task.task_id = event.task_id = request_task_id(task.owner, task.request_id)

        def insert(db: sqlite3.Connection) -> tuple[task_pb2.Task, bool, int]:
            if task.request_id:
                row = db.execute(
                    "SELECT fixed, live, request_fp FROM tasks WHERE owner=? AND request_id=?",
                    (task.owner, task.request_id),
                ).fetchone()
                if row is not None:
                    existing = assemble(row[0], row[1])
                    if row[2] != fingerprint:
                        raise RequestIdReused(task.request_id, existing.task_id)
                    return existing, False, 0
            if max_queue and not holder and self._queued(db) >= max_queue:
                raise QueueFull(max_queue)
            leased = (0, holder, 1, now_seconds() + lease_seconds) if holder else (1, None, 0, None)
            with db:
                db.execute(
                    "INSERT INTO tasks (task_id, workflow_id, owner, status, priority,"
                    " request_id, request_fp, fixed, live, "
                    "last_sequence, queued, lease_owner, lease_token, lease_expires)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        task.task_id,
                        task.workflow_id,
                        task.owner,
                        task.status,
                        task.priority,
                        task.request_id or None,
                        fingerprint,
                        fixed_part(task),
                        live_part(task),
                        task.last_sequence,
                        *leased,
                    ),
                )
                db.execute(
                    "INSERT INTO events VALUES (?,?,?)", (task.task_id, event.sequence, event.SerializeToString())
                )
                db.executemany(
                    "INSERT OR IGNORE INTO task_values VALUES (?,?,?)",
                    [(task.task_id, d, data) for d, data in (values or {}).items()],
                )
            if not holder:
                taken, count = self._queue_count
                self._queue_count = (taken, count + 1)
            return task, True, 1 if holder else 0

        created = await self._run(insert)
        if created[1]:
            self._written(task.task_id, [event])
        return created

    def _queued(self, db: sqlite3.Connection) -> int:
        """Queued tasks, counted at most every QUEUE_LENGTH_CACHE_SECONDS, plus what this store
        queued since (on the store's thread, so the limit holds exactly for this process)."""
        taken, count = self._queue_count
        if time.monotonic() - taken > QUEUE_LENGTH_CACHE_SECONDS:
            count = int(db.execute("SELECT COUNT(*) FROM tasks WHERE queued=1").fetchone()[0])
            self._queue_count = (time.monotonic(), count)
        return count

    async def get_task(self, task_id: str) -> task_pb2.Task | None:
        rows = await self._rows("SELECT fixed, live FROM tasks WHERE task_id=?", (task_id,))
        return assemble(rows[0][0], rows[0][1]) if rows else None

    async def list_tasks(self, page_size: int, page_token: str, where: TaskFilter) -> TaskPage:
        """Newest first. The token is the row number of the last task returned, so pages stay
        stable while tasks arrive (they sort before it) or are purged (they drop out)."""
        position = decode_position(page_token)
        conditions: list[str] = []
        args: list[object] = []
        if where.statuses:
            conditions.append(f"status IN ({','.join('?' * len(where.statuses))})")
            args += list(where.statuses)
        if where.workflow_id:
            conditions.append("workflow_id=?")
            args.append(where.workflow_id)
        if where.owner:
            conditions.append("owner=?")
            args.append(where.owner)
        filtered = " AND ".join(conditions) or "1"

        def select(db: sqlite3.Connection) -> tuple[list[Any], int]:
            rows = db.execute(
                f"SELECT seq, fixed, live FROM tasks WHERE {filtered} AND seq < ? ORDER BY seq DESC LIMIT ?",
                [*args, 2**62 if position is None else position, page_size + 1],
            ).fetchall()
            total = db.execute(f"SELECT COUNT(*) FROM tasks WHERE {filtered}", args).fetchone()[0]
            return rows, int(total)

        rows, total = await self._run(select)
        page = rows[:page_size]
        return TaskPage(
            [assemble(r[1], r[2]) for r in page], [encode_token(str(r[0])) for r in page], len(rows) > page_size, total
        )

    async def read_steps(self, task_id: str, start: int, limit: int) -> list[StepRecord]:
        rows = await self._rows(
            "SELECT idx, path, data FROM steps WHERE task_id=? AND idx>=? ORDER BY idx LIMIT ?",
            (task_id, start, min(limit, 2**62)),
        )
        return [StepRecord(int(r[0]), str(r[1]), bytes(r[2])) for r in rows]

    async def read_step(self, task_id: str, path: str) -> StepRecord | None:
        rows = await self._rows("SELECT idx, path, data FROM steps WHERE task_id=? AND path=?", (task_id, path))
        return StepRecord(int(rows[0][0]), str(rows[0][1]), bytes(rows[0][2])) if rows else None

    async def read_values(self, task_id: str, digests: Sequence[str]) -> dict[str, bytes]:
        if not digests:
            return {}
        rows = await self._rows(
            f"SELECT digest, data FROM task_values WHERE task_id=? AND digest IN ({','.join('?' * len(digests))})",
            [task_id, *digests],
        )
        return {str(r[0]): bytes(r[1]) for r in rows}

    async def save_checkpoint(self, checkpoint: Checkpoint) -> None:
        terminal = checkpoint.status in TERMINAL
        last = checkpoint.events[-1].sequence if checkpoint.events else 0

        def write(db: sqlite3.Connection) -> None:
            with db:
                updated = db.execute(
                    "UPDATE tasks SET live=?, status=?, last_sequence=MAX(last_sequence, ?), "
                    "lease_expires=CASE WHEN ? THEN NULL ELSE lease_expires END,"
                    " finished_at=CASE WHEN ? THEN ? ELSE NULL END "
                    "WHERE task_id=? AND lease_token=?",
                    (
                        checkpoint.live,
                        checkpoint.status,
                        last,
                        terminal,
                        terminal,
                        now_seconds(),
                        checkpoint.task_id,
                        checkpoint.lease_token,
                    ),
                )
                if updated.rowcount != 1:
                    raise LeaseLost(f"task {checkpoint.task_id}: lease {checkpoint.lease_token} is no longer held")
                db.executemany(
                    "INSERT OR REPLACE INTO steps VALUES (?,?,?,?)",
                    [(checkpoint.task_id, s.index, s.path, s.data) for s in checkpoint.steps],
                )
                db.executemany(
                    "INSERT OR IGNORE INTO task_values VALUES (?,?,?)",
                    [(checkpoint.task_id, d, data) for d, data in checkpoint.values.items()],
                )
                db.executemany(
                    "INSERT OR IGNORE INTO events VALUES (?,?,?)",
                    [(e.task_id, e.sequence, e.SerializeToString()) for e in checkpoint.events],
                )

        await self._run(write)
        self._written(checkpoint.task_id, checkpoint.events)

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
                    "UPDATE tasks SET live=?, status=?, last_sequence=?, queued=0, finished_at=? WHERE task_id=?",
                    (live_part(task), task.status, task.last_sequence, now_seconds(), task_id),
                )
                db.execute(
                    "INSERT INTO events VALUES (?,?,?)", (task_id, numbered.sequence, numbered.SerializeToString())
                )
            events.append(numbered)
            return task

        events: list[task_pb2.TaskEvent] = []
        cancelled = await self._run(cancel)
        self._written(task_id, events)
        return cancelled

    async def request_cancel(self, task_id: str, reason: str) -> None:
        await self._write("UPDATE tasks SET cancel_reason=? WHERE task_id=?", (reason, task_id))

    async def cancel_requests(self, task_ids: Sequence[str]) -> dict[str, str]:
        if not task_ids:
            return {}
        rows = await self._rows(
            f"SELECT task_id, cancel_reason FROM tasks WHERE cancel_reason IS NOT NULL "
            f"AND task_id IN ({','.join('?' * len(task_ids))})",
            list(task_ids),
        )
        return {str(r[0]): str(r[1]) for r in rows}

    async def read_events(
        self, task_id: str, after_sequence: int, limit: int = EVENTS_PAGE
    ) -> list[task_pb2.TaskEvent]:
        rows = await self._rows(
            "SELECT data FROM events WHERE task_id=? AND sequence>? ORDER BY sequence LIMIT ?",
            (task_id, after_sequence, limit),
        )
        return [task_pb2.TaskEvent.FromString(r[0]) for r in rows]

    async def wait_events(self, task_id: str, after_sequence: int, timeout: float) -> list[task_pb2.TaskEvent]:
        """Events after `after_sequence`, waiting up to `timeout` for one. Every write is this
        process's, so a followed log is fed from memory after the write commits: one read
        when a watcher starts, none per event after that."""
        if not self._followers.covers(task_id, after_sequence):
            self._followers.prune()
            self._followers.follow(task_id, after_sequence)  # first follow, then read: nothing falls between
            events = await self.read_events(task_id, after_sequence, EVENTS_PAGE)
            if len(events) == EVENTS_PAGE:  # more are stored after this page: read on from there next time
                self._followers.unfollow(task_id)
                return events
            self._followers.add(task_id, events)
            if events:
                return events
        followed = await self._followers.wait(task_id, after_sequence, timeout)
        return await self.read_events(task_id, after_sequence) if followed is None else followed

    def _written(self, task_id: str, events: Sequence[task_pb2.TaskEvent]) -> None:
        self._followers.add(task_id, events)

    # ---- queue and leases -----------------------------------------------------------------
    async def claim_task(self, owner: str, lease_seconds: float) -> tuple[task_pb2.Task, int] | None:
        def claim(db: sqlite3.Connection) -> tuple[task_pb2.Task, int] | None:
            row = db.execute(
                "SELECT task_id, fixed, live, lease_token FROM tasks WHERE queued=1 ORDER BY priority DESC, seq LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            token = int(row[3]) + 1
            with db:
                db.execute(
                    "UPDATE tasks SET queued=0, lease_owner=?, lease_token=?, lease_expires=? WHERE task_id=?",
                    (owner, token, now_seconds() + lease_seconds, row[0]),
                )
            return assemble(row[1], row[2]), token

        return await self._run(claim)

    async def renew_leases(self, leases: Mapping[str, int], lease_seconds: float) -> list[str]:
        if not leases:
            return []
        expires = now_seconds() + lease_seconds

        def renew(db: sqlite3.Connection) -> list[str]:
            lost = []
            with db:
                for task_id, token in leases.items():
                    cursor = db.execute(
                        "UPDATE tasks SET lease_expires=? WHERE task_id=?"
                        " AND lease_token=? AND lease_expires IS NOT NULL",
                        (expires, task_id, token),
                    )
                    if cursor.rowcount != 1:
                        lost.append(task_id)
            return lost

        return await self._run(renew)

    async def release_expired_leases(self) -> int:
        return await self._write(
            f"UPDATE tasks SET queued=1, lease_expires=NULL, lease_owner=NULL WHERE lease_expires IS NOT NULL "
            f"AND lease_expires <= ? AND status IN ({','.join(str(s) for s in ACTIVE)})",
            (now_seconds(),),
        )

    async def purge_finished(self) -> int:
        cutoff = now_seconds() - self.retention_seconds

        def purge(db: sqlite3.Connection) -> int:
            with db:
                for table in ("events", "steps", "task_values"):
                    db.execute(
                        f"DELETE FROM {table} WHERE task_id IN (SELECT task_id FROM tasks WHERE finished_at < ?)",
                        (cutoff,),
                    )
                return int(db.execute("DELETE FROM tasks WHERE finished_at < ?", (cutoff,)).rowcount)

        return await self._run(purge)

    async def queue_depth_by_priority(self) -> dict[int, int]:
        rows = await self._rows("SELECT priority, COUNT(*) FROM tasks WHERE queued=1 GROUP BY priority")
        return {int(r[0]): int(r[1]) for r in rows}

    async def queue_length(self) -> int:
        rows = await self._rows("SELECT COUNT(*) FROM tasks WHERE queued=1")
        return int(rows[0][0])

    # ---- registry -------------------------------------------------------------------------
    async def put_protocol(self, entry: registry_pb2.RegisteredProtocol) -> None:
        await self._write(
            "INSERT OR REPLACE INTO protocol_instances VALUES (?,?,?)",
            (entry.manifest.name, entry.address, entry.SerializeToString(deterministic=True)),
        )

    async def remove_protocol_entries(self, entries: Sequence[registry_pb2.RegisteredProtocol]) -> list[int]:
        def remove(db: sqlite3.Connection) -> list[int]:
            with db:
                return [
                    index
                    for index, e in enumerate(entries)
                    if db.execute(
                        "DELETE FROM protocol_instances WHERE name=? AND address=? AND data=?",
                        (e.manifest.name, e.address, e.SerializeToString(deterministic=True)),
                    ).rowcount
                ]

        return await self._run(remove)

    async def delete_protocols(self, name: str = "", address: str = "") -> int:
        return await self._write("DELETE FROM protocol_instances WHERE name=? OR address=?", (name, address))

    async def list_protocol_entries(self) -> list[registry_pb2.RegisteredProtocol]:
        rows = await self._rows("SELECT data FROM protocol_instances ORDER BY name, address")
        return [registry_pb2.RegisteredProtocol.FromString(r[0]) for r in rows]

    async def acquire_capacity(self, request: CapacityRequest) -> str | None:
        return self._ledger.acquire(request)

    async def release_capacity(self, waiter_id: str, member: str) -> int:
        self._ledger.release(waiter_id)
        return self._ledger.waiting_count()

    async def capacity_waiting(self) -> int:
        return self._ledger.waiting_count()

    async def renew_capacity(self, waiter_ids: Sequence[str], lease_seconds: float) -> None:
        self._ledger.renew(waiter_ids, lease_seconds)

    async def capacity_in_use(self) -> dict[str, str]:
        return self._ledger.use()

    async def put_breaker_state(self, protocol: str, state: str) -> None:
        await self._write("INSERT OR REPLACE INTO breakers VALUES (?, ?)", (protocol, state))

    async def breaker_states(self) -> dict[str, str]:
        return {str(r[0]): str(r[1]) for r in await self._rows("SELECT protocol, state FROM breakers")}

    async def ping(self) -> None:
        await self._rows("SELECT 1")

    async def close(self) -> None:
        await self._run(lambda db: db.close())
        await self.worker.stop()

    # ---- helpers --------------------------------------------------------------------------
    async def _rows(self, sql: str, args: Sequence[object] = ()) -> list[Any]:
        return await self._run(lambda db: db.execute(sql, args).fetchall())

    async def _write(self, sql: str, args: Sequence[object] = ()) -> int:
        def write(db: sqlite3.Connection) -> int:
            with db:
                return int(db.execute(sql, args).rowcount)

        return await self._run(write)


def _connect(path: str) -> sqlite3.Connection:
    if path not in ("", ":memory:"):
        where = Path(path).resolve()
        try:
            where.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(path, check_same_thread=False, isolation_level="DEFERRED")
            db.execute("PRAGMA user_version").fetchone()  # opening is lazy: touch the file now
        except (OSError, sqlite3.Error) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise StartupError(
                f"cannot open the SQLite store at {where}: {reason} (set --store or MCP_STORE_URL to "
                "sqlite:///relative/path or sqlite:////absolute/path in a directory you can write)"
            ) from None
    else:
        db = sqlite3.connect(":memory:", check_same_thread=False, isolation_level="DEFERRED")
    had_tasks = db.execute("SELECT 1 FROM sqlite_master WHERE name='tasks'").fetchone() is not None
    had_meta = db.execute("SELECT 1 FROM sqlite_master WHERE name='meta'").fetchone() is not None
    found = db.execute("SELECT value FROM meta WHERE key='layout'").fetchone() if had_meta else None
    if had_tasks and (found is None or found[0] != str(LAYOUT_VERSION)):
        db.close()
        raise StartupError(
            f"the SQLite store at {path} "
            + LAYOUT_MISMATCH.format(found=found[0] if found else 1, wanted=LAYOUT_VERSION)
        )
    db.executescript(SCHEMA)
    with db:
        db.execute("INSERT OR IGNORE INTO meta VALUES ('layout', ?)", (str(LAYOUT_VERSION),))
        # One process owns the file, so a lease found at open belongs to a process that is gone:
        # expire them all now, and the dispatcher resumes those tasks at once.
        db.execute("UPDATE tasks SET lease_expires = 0 WHERE lease_expires IS NOT NULL")
    return db
