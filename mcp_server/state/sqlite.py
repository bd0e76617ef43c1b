"""The embedded store: SQLite through aiosqlite (a worker thread), so the event loop never blocks.

One process owns the file. Every step's snapshot and events go in one transaction. Watchers
in this process are woken by an in-memory condition when a task's log grows.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

import aiosqlite

from mcp_server.engine.context import now
from mcp_server.errors import LeaseLost, Unavailable
from mcp_server.proto import registry_pb2, task_pb2, workflow_pb2
from mcp_server.state.common import ACTIVE, TERMINAL, QueueFull, RequestIdReused, decode_position, decode_token, encode_token, mark_cancelled, now_seconds

SCHEMA = """
PRAGMA journal_mode=WAL;
PRAGMA synchronous=NORMAL;
CREATE TABLE IF NOT EXISTS workflows (
  workflow_id TEXT NOT NULL, version INTEGER NOT NULL, data BLOB NOT NULL,
  PRIMARY KEY (workflow_id, version));
CREATE TABLE IF NOT EXISTS tasks (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, task_id TEXT NOT NULL UNIQUE, workflow_id TEXT NOT NULL,
  status INTEGER NOT NULL, priority INTEGER NOT NULL, request_id TEXT, request_fp TEXT, data BLOB NOT NULL,
  queued INTEGER NOT NULL DEFAULT 0, lease_owner TEXT, lease_token INTEGER NOT NULL DEFAULT 0,
  lease_expires REAL, finished_at REAL, cancel_reason TEXT, owner TEXT NOT NULL DEFAULT '');
CREATE UNIQUE INDEX IF NOT EXISTS tasks_request ON tasks (owner, request_id);
CREATE INDEX IF NOT EXISTS tasks_queue ON tasks (queued, priority DESC, seq);
CREATE INDEX IF NOT EXISTS tasks_lease ON tasks (lease_expires);
CREATE INDEX IF NOT EXISTS tasks_finished ON tasks (finished_at);
CREATE TABLE IF NOT EXISTS events (
  task_id TEXT NOT NULL, sequence INTEGER NOT NULL, data BLOB NOT NULL,
  PRIMARY KEY (task_id, sequence));
CREATE TABLE IF NOT EXISTS protocols (name TEXT PRIMARY KEY, address TEXT NOT NULL, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS breakers (protocol TEXT PRIMARY KEY, state TEXT NOT NULL);
"""


class SqliteStore:
    """Store backed by one SQLite file (see Store in engine/ports.py for the contract)."""

    def __init__(self, db: aiosqlite.Connection, retention_seconds: float) -> None:
        self.db = db
        self.retention_seconds = retention_seconds
        self._lock = asyncio.Lock()
        self._changed: defaultdict[str, asyncio.Condition] = defaultdict(asyncio.Condition)

    @classmethod
    async def open(cls, path: str, retention_seconds: float = 7 * 24 * 3600.0) -> SqliteStore:
        if path not in ("", ":memory:"):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(path or ":memory:", isolation_level=None)
        await db.executescript(SCHEMA)
        # One process owns the file, so a lease found at open belongs to a process that is gone:
        # expire them all now, and the dispatcher resumes those tasks at once.
        await db.execute("UPDATE tasks SET lease_expires = 0 WHERE lease_expires IS NOT NULL")
        return cls(db, retention_seconds)

    async def _transaction(self, statements: Sequence[tuple[str, Sequence[object]]]) -> list[int]:
        async with self._lock:
            try:
                await self.db.execute("BEGIN IMMEDIATE")
                counts = []
                for sql, args in statements:
                    cursor = await self.db.execute(sql, args)
                    counts.append(cursor.rowcount)
                await self.db.execute("COMMIT")
                return counts
            except sqlite3.Error as exc:
                await self.db.execute("ROLLBACK")
                raise Unavailable(f"sqlite store: {exc}") from exc

    async def _rows(self, sql: str, args: Sequence[object] = ()) -> list[sqlite3.Row]:
        try:
            async with self.db.execute(sql, args) as cursor:
                return list(await cursor.fetchall())
        except sqlite3.Error as exc:
            raise Unavailable(f"sqlite store: {exc}") from exc

    # ---- workflows ------------------------------------------------------------------------
    async def create_workflow(self, workflow: workflow_pb2.Workflow) -> workflow_pb2.Workflow:
        async with self._lock:
            rows = await self._rows("SELECT COALESCE(MAX(version), 0) FROM workflows WHERE workflow_id=?", (workflow.workflow_id,))
            stored = workflow_pb2.Workflow()
            stored.CopyFrom(workflow)
            stored.version = int(rows[0][0]) + 1
            stored.create_time.CopyFrom(now())
            await self.db.execute("INSERT INTO workflows VALUES (?, ?, ?)",
                                  (stored.workflow_id, stored.version, stored.SerializeToString()))
        return stored

    async def get_workflow(self, workflow_id: str, version: int = 0) -> workflow_pb2.Workflow | None:
        if version:
            rows = await self._rows("SELECT data FROM workflows WHERE workflow_id=? AND version=?", (workflow_id, version))
        else:
            rows = await self._rows("SELECT data FROM workflows WHERE workflow_id=? ORDER BY version DESC LIMIT 1", (workflow_id,))
        return workflow_pb2.Workflow.FromString(rows[0][0]) if rows else None

    async def list_workflows(self, page_size: int, page_token: str) -> tuple[list[workflow_pb2.Workflow], str]:
        after = decode_token(page_token)
        rows = await self._rows(
            "SELECT w.data FROM workflows w JOIN (SELECT workflow_id, MAX(version) v FROM workflows "
            "WHERE workflow_id > ? GROUP BY workflow_id) l ON w.workflow_id=l.workflow_id AND w.version=l.v "
            "ORDER BY w.workflow_id LIMIT ?", (after, page_size + 1))
        workflows = [workflow_pb2.Workflow.FromString(r[0]) for r in rows[:page_size]]
        token = encode_token(workflows[-1].workflow_id) if len(rows) > page_size else ""
        return workflows, token

    async def delete_workflow(self, workflow_id: str) -> int:
        return (await self._transaction([("DELETE FROM workflows WHERE workflow_id=?", (workflow_id,))]))[0]

    # ---- tasks ----------------------------------------------------------------------------
    async def create_task(self, task: task_pb2.Task, event: task_pb2.TaskEvent, max_queue: int = 0,
                          fingerprint: str = "") -> tuple[task_pb2.Task, bool]:
        if task.request_id and (existing := await self._by_request(task, fingerprint)) is not None:
            return existing, False
        if max_queue and await self.queue_length() >= max_queue:  # one writer process: no race to guard
            raise QueueFull(max_queue)
        try:
            await self._transaction([
                ("INSERT INTO tasks (task_id, workflow_id, status, priority, request_id, request_fp, data, queued, owner) "
                 "VALUES (?,?,?,?,?,?,?,1,?)",
                 (task.task_id, task.workflow_id, task.status, task.priority, task.request_id or None, fingerprint,
                  task.SerializeToString(), task.owner)),
                ("INSERT INTO events VALUES (?,?,?)", (task.task_id, event.sequence, event.SerializeToString())),
            ])
        except Unavailable as exc:
            if isinstance(exc.__cause__, sqlite3.IntegrityError) and task.request_id:
                existing = await self._by_request(task, fingerprint)
                if existing is not None:
                    return existing, False
            raise
        await self._notify(task.task_id)
        return task, True

    async def _by_request(self, task: task_pb2.Task, fingerprint: str) -> task_pb2.Task | None:
        rows = await self._rows("SELECT data, request_fp FROM tasks WHERE owner=? AND request_id=?", (task.owner, task.request_id))
        if not rows:
            return None
        existing = task_pb2.Task.FromString(rows[0][0])
        if (rows[0][1] or "") != fingerprint:
            raise RequestIdReused(task.request_id, existing.task_id)
        return existing

    async def get_task(self, task_id: str) -> task_pb2.Task | None:
        rows = await self._rows("SELECT data FROM tasks WHERE task_id=?", (task_id,))
        return task_pb2.Task.FromString(rows[0][0]) if rows else None

    async def list_tasks(self, page_size: int, page_token: str, statuses: Sequence[int], workflow_id: str,
                         owner: str = "") -> tuple[list[task_pb2.Task], str]:
        position = decode_position(page_token)
        before = 2**62 if position is None else position
        sql = "SELECT seq, data FROM tasks WHERE seq < ?"
        args: list[object] = [before]
        if statuses:
            sql += f" AND status IN ({','.join('?' * len(statuses))})"
            args += list(statuses)
        if workflow_id:
            sql += " AND workflow_id=?"
            args.append(workflow_id)
        if owner:
            sql += " AND owner=?"
            args.append(owner)
        rows = await self._rows(sql + " ORDER BY seq DESC LIMIT ?", [*args, page_size + 1])
        tasks = [task_pb2.Task.FromString(r[1]) for r in rows[:page_size]]
        return tasks, encode_token(str(rows[page_size - 1][0])) if len(rows) > page_size else ""

    async def save_task(self, task: task_pb2.Task, events: Sequence[task_pb2.TaskEvent], lease_token: int) -> None:
        terminal = task.status in TERMINAL
        statements: list[tuple[str, Sequence[object]]] = [(
            "UPDATE tasks SET data=?, status=?, lease_expires=CASE WHEN ? THEN NULL ELSE lease_expires END, "
            "finished_at=CASE WHEN ? THEN ? ELSE NULL END WHERE task_id=? AND lease_token=?",
            (task.SerializeToString(), task.status, terminal, terminal, now_seconds(), task.task_id, lease_token))]
        statements += [("INSERT INTO events VALUES (?,?,?)", (e.task_id, e.sequence, e.SerializeToString())) for e in events]
        async with self._lock:
            try:
                await self.db.execute("BEGIN IMMEDIATE")
                cursor = await self.db.execute(*statements[0])
                if cursor.rowcount != 1:
                    await self.db.execute("ROLLBACK")
                    raise LeaseLost(f"task {task.task_id}: lease {lease_token} is no longer held")
                for sql, args in statements[1:]:
                    await self.db.execute(sql, args)
                await self.db.execute("COMMIT")
            except sqlite3.Error as exc:
                await self.db.execute("ROLLBACK")
                raise Unavailable(f"sqlite store: {exc}") from exc
        await self._notify(task.task_id)

    async def cancel_pending(self, task_id: str, event: task_pb2.TaskEvent) -> task_pb2.Task | None:
        async with self._lock:
            rows = await self._rows("SELECT data FROM tasks WHERE task_id=? AND queued=1 AND status=?",
                                    (task_id, task_pb2.TASK_STATUS_PENDING))
            if not rows:
                return None
            task = task_pb2.Task.FromString(rows[0][0])
            numbered = mark_cancelled(task, event)
            await self.db.execute("BEGIN IMMEDIATE")
            await self.db.execute("UPDATE tasks SET data=?, status=?, queued=0, finished_at=? WHERE task_id=?",
                                  (task.SerializeToString(), task.status, now_seconds(), task_id))
            await self.db.execute("INSERT INTO events VALUES (?,?,?)", (task_id, numbered.sequence, numbered.SerializeToString()))
            await self.db.execute("COMMIT")
        await self._notify(task_id)
        return task

    async def request_cancel(self, task_id: str, reason: str) -> None:
        await self._transaction([("UPDATE tasks SET cancel_reason=? WHERE task_id=?", (reason, task_id))])

    async def cancel_requests(self, task_ids: Sequence[str]) -> dict[str, str]:
        if not task_ids:
            return {}
        rows = await self._rows(f"SELECT task_id, cancel_reason FROM tasks WHERE cancel_reason IS NOT NULL "
                                f"AND task_id IN ({','.join('?' * len(task_ids))})", list(task_ids))
        return {str(r[0]): str(r[1]) for r in rows}

    async def read_events(self, task_id: str, after_sequence: int, limit: int = 1000) -> list[task_pb2.TaskEvent]:
        rows = await self._rows("SELECT data FROM events WHERE task_id=? AND sequence>? ORDER BY sequence LIMIT ?",
                                (task_id, after_sequence, limit))
        return [task_pb2.TaskEvent.FromString(r[0]) for r in rows]

    async def wait_events(self, task_id: str, after_sequence: int, timeout: float) -> list[task_pb2.TaskEvent]:
        condition = self._changed[task_id]
        async with condition:
            events = await self.read_events(task_id, after_sequence)
            if events:
                return events
            try:
                await asyncio.wait_for(condition.wait(), timeout)
            except TimeoutError:
                return []
        return await self.read_events(task_id, after_sequence)

    async def _notify(self, task_id: str) -> None:
        condition = self._changed.get(task_id)
        if condition is not None:
            async with condition:
                condition.notify_all()

    # ---- queue and leases -----------------------------------------------------------------
    async def claim_task(self, owner: str, lease_seconds: float) -> tuple[task_pb2.Task, int] | None:
        async with self._lock:
            rows = await self._rows("SELECT task_id, data, lease_token FROM tasks WHERE queued=1 ORDER BY priority DESC, seq LIMIT 1")
            if not rows:
                return None
            task_id, data, token = rows[0][0], rows[0][1], int(rows[0][2]) + 1
            await self.db.execute("UPDATE tasks SET queued=0, lease_owner=?, lease_token=?, lease_expires=? WHERE task_id=?",
                                  (owner, token, now_seconds() + lease_seconds, task_id))
        return task_pb2.Task.FromString(data), token

    async def renew_leases(self, leases: Mapping[str, int], lease_seconds: float) -> list[str]:
        if not leases:
            return []
        expires = now_seconds() + lease_seconds
        sql = "UPDATE tasks SET lease_expires=? WHERE task_id=? AND lease_token=? AND lease_expires IS NOT NULL"
        counts = await self._transaction([(sql, (expires, task_id, token)) for task_id, token in leases.items()])
        return [task_id for task_id, count in zip(leases, counts) if count != 1]

    async def release_expired_leases(self) -> int:
        counts = await self._transaction([(
            f"UPDATE tasks SET queued=1, lease_expires=NULL, lease_owner=NULL WHERE lease_expires IS NOT NULL "
            f"AND lease_expires <= ? AND status IN ({','.join(str(s) for s in ACTIVE)})", (now_seconds(),))])
        return counts[0]

    async def purge_finished(self) -> int:
        cutoff = now_seconds() - self.retention_seconds
        counts = await self._transaction([
            ("DELETE FROM events WHERE task_id IN (SELECT task_id FROM tasks WHERE finished_at < ?)", (cutoff,)),
            ("DELETE FROM tasks WHERE finished_at < ?", (cutoff,)),
        ])
        return counts[1]

    async def queue_depth_by_priority(self) -> dict[int, int]:
        rows = await self._rows("SELECT priority, COUNT(*) FROM tasks WHERE queued=1 GROUP BY priority")
        return {int(r[0]): int(r[1]) for r in rows}

    async def queue_length(self) -> int:
        rows = await self._rows("SELECT COUNT(*) FROM tasks WHERE queued=1")
        return int(rows[0][0])

    # ---- registry -------------------------------------------------------------------------
    async def put_protocol(self, entry: registry_pb2.RegisteredProtocol) -> None:
        await self._transaction([("INSERT OR REPLACE INTO protocols VALUES (?,?,?)",
                                  (entry.manifest.name, entry.address, entry.SerializeToString()))])

    async def delete_protocols(self, name: str = "", address: str = "") -> int:
        return (await self._transaction([("DELETE FROM protocols WHERE name=? OR address=?", (name, address))]))[0]

    async def list_protocol_entries(self) -> list[registry_pb2.RegisteredProtocol]:
        rows = await self._rows("SELECT data FROM protocols ORDER BY name")
        return [registry_pb2.RegisteredProtocol.FromString(r[0]) for r in rows]

    async def put_breaker_state(self, protocol: str, state: str) -> None:
        await self._transaction([("INSERT OR REPLACE INTO breakers VALUES (?, ?)", (protocol, state))])

    async def breaker_states(self) -> dict[str, str]:
        return {str(r[0]): str(r[1]) for r in await self._rows("SELECT protocol, state FROM breakers")}

    async def ping(self) -> None:
        await self._rows("SELECT 1")

    async def close(self) -> None:
        await self.db.close()
