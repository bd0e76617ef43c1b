"""The embedded store's file: one SQLite connection, used from one worker thread so the event
loop never blocks, shared by every port of the store (workflows, tasks, queue, registry).

Every operation is one function run on that thread, so a checkpoint (the live header, the
changed step records, new values, events) is one transaction and one hop off the loop. One
process owns the file. Watchers in this process are woken from memory when a task's log grows
(`followers`, fed by every write that adds events).

Tables: `tasks` (a row per task: its fixed and live parts, the columns listing and the queue
need), `steps` (a row per step record, keyed by task and index), `task_values` (large values
by task and SHA-256), `value_links` (the large values a rerun shares with the task that holds
them: task, SHA-256 -> that task), `events`, `workflows`, `protocol_instances`, `breakers`,
`rate_limits` and `rate_grants` (each key's limit, and what it granted within the last period),
`rate_state` (the state of each key limited by a template, until it could hold nothing back),
`meta` (the layout).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from mcp_sdk.proto import task_pb2, workflow_pb2
from mcp_server.engine.ports.workflows import waited_events
from mcp_server.errors import StartupError, StoreFull, Unavailable
from mcp_server.state.common import LAYOUT_MISMATCH, LAYOUT_VERSION
from mcp_server.state.followers import Followers
from mcp_server.state.sqlite.file_lock import StoreLock
from mcp_server.state.store_thread import StoreThread

T = TypeVar("T")
SCHEMA = """
PRAGMA journal_mode=WAL;
PRAGMA synchronous=NORMAL;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS workflows (
  workflow_id TEXT NOT NULL, version INTEGER NOT NULL, data BLOB NOT NULL, deleted_at REAL,
  PRIMARY KEY (workflow_id, version));
CREATE TABLE IF NOT EXISTS event_triggers (
  event TEXT NOT NULL, workflow_id TEXT NOT NULL, version INTEGER NOT NULL,
  PRIMARY KEY (event, workflow_id));
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
CREATE TABLE IF NOT EXISTS value_links (
  task_id TEXT NOT NULL, digest TEXT NOT NULL, origin TEXT NOT NULL, PRIMARY KEY (task_id, digest)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS value_links_by_origin ON value_links (origin);
CREATE TABLE IF NOT EXISTS events (
  task_id TEXT NOT NULL, sequence INTEGER NOT NULL, data BLOB NOT NULL,
  PRIMARY KEY (task_id, sequence)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS protocol_instances (
  name TEXT NOT NULL, address TEXT NOT NULL, data BLOB NOT NULL, PRIMARY KEY (name, address));
CREATE TABLE IF NOT EXISTS breakers (protocol TEXT PRIMARY KEY, state TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS signals (
  task_id TEXT NOT NULL, idx INTEGER NOT NULL, request_id TEXT NOT NULL, data BLOB NOT NULL,
  sequence INTEGER NOT NULL DEFAULT 0, assigned TEXT NOT NULL DEFAULT '', held_bytes INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (task_id, idx)) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS signals_by_request ON signals (task_id, request_id) WHERE request_id != '';
CREATE INDEX IF NOT EXISTS signals_untaken ON signals (task_id) WHERE sequence = 0;
CREATE TABLE IF NOT EXISTS rate_limits (
  key TEXT PRIMARY KEY, lim REAL NOT NULL, period REAL NOT NULL, burst REAL NOT NULL, tat REAL NOT NULL DEFAULT 0,
  used REAL NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS rate_grants (key TEXT NOT NULL, at REAL NOT NULL, units REAL NOT NULL);
CREATE INDEX IF NOT EXISTS rate_grants_by_key ON rate_grants (key, at);
CREATE TABLE IF NOT EXISTS rate_state (
  key TEXT PRIMARY KEY, tat REAL NOT NULL, used REAL NOT NULL, expires REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS rate_state_by_expiry ON rate_state (expires);
CREATE TABLE IF NOT EXISTS step_cache (
  key TEXT PRIMARY KEY, task_id TEXT NOT NULL, output BLOB NOT NULL, expires REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS step_cache_by_task ON step_cache (task_id);
CREATE TABLE IF NOT EXISTS schedules (
  schedule_id TEXT PRIMARY KEY, owner TEXT NOT NULL, data BLOB NOT NULL, version INTEGER NOT NULL,
  created_ms INTEGER NOT NULL, due_ms INTEGER, runs INTEGER NOT NULL DEFAULT 0, skipped INTEGER NOT NULL DEFAULT 0,
  missed INTEGER NOT NULL DEFAULT 0, last_fire_ms INTEGER NOT NULL DEFAULT 0, buffered_ms INTEGER NOT NULL DEFAULT 0,
  recent TEXT NOT NULL DEFAULT '[]', refused INTEGER NOT NULL DEFAULT 0, refusals TEXT NOT NULL DEFAULT '[]',
  latest_run TEXT NOT NULL DEFAULT '[0, ""]');
CREATE INDEX IF NOT EXISTS schedules_due ON schedules (due_ms) WHERE due_ms IS NOT NULL;
CREATE TABLE IF NOT EXISTS bulk_actions (
  action_id TEXT PRIMARY KEY, owner TEXT NOT NULL, data BLOB NOT NULL, cursor TEXT NOT NULL,
  version INTEGER NOT NULL, running INTEGER NOT NULL, admin INTEGER NOT NULL, request_id TEXT NOT NULL,
  due_ms INTEGER, ended_ms INTEGER);
CREATE INDEX IF NOT EXISTS bulk_actions_due ON bulk_actions (due_ms) WHERE running = 1;
CREATE INDEX IF NOT EXISTS bulk_actions_ended ON bulk_actions (ended_ms) WHERE running = 0;
CREATE INDEX IF NOT EXISTS bulk_actions_by_owner ON bulk_actions (owner, running, action_id);
CREATE UNIQUE INDEX IF NOT EXISTS bulk_actions_request ON bulk_actions (owner, request_id) WHERE request_id != '';
CREATE INDEX IF NOT EXISTS schedules_by_owner ON schedules (owner, schedule_id);
CREATE TABLE IF NOT EXISTS waits (
  task_id TEXT NOT NULL, path TEXT NOT NULL, record TEXT NOT NULL, PRIMARY KEY (task_id, path)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS event_waits (
  signal TEXT NOT NULL, key TEXT NOT NULL, task_id TEXT NOT NULL, path TEXT NOT NULL,
  PRIMARY KEY (signal, key, task_id, path)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS event_waits_by_task ON event_waits (task_id);
CREATE TABLE IF NOT EXISTS kept_events (
  name TEXT NOT NULL, slot TEXT NOT NULL, time_ms INTEGER NOT NULL, record BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS kept_events_by_slot ON kept_events (name, slot, time_ms);
CREATE TABLE IF NOT EXISTS waited_events (event TEXT PRIMARY KEY, lookback REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS cancelling_events (event TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS kept_slots (
  name TEXT NOT NULL, slot TEXT NOT NULL, last_ms INTEGER NOT NULL, gone_ms INTEGER NOT NULL,
  PRIMARY KEY (name, slot)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS kept_slots_by_name ON kept_slots (name, last_ms);
CREATE INDEX IF NOT EXISTS kept_slots_gone ON kept_slots (gone_ms);
"""
PENDING, RUNNING = task_pb2.TASK_STATUS_PENDING, task_pb2.TASK_STATUS_RUNNING
LONGEST_LOOKBACK_MS = 7 * 86400 * 1000  # a wait's lookback is a duration, at most 7 days
# Columns added since state layout 2 was first written: a file without them gets them at open.
ADDED_COLUMNS = {
    "due_at": "ALTER TABLE tasks ADD COLUMN due_at REAL",
    "rerun_of": "ALTER TABLE tasks ADD COLUMN rerun_of TEXT",
    "fair_group": "ALTER TABLE tasks ADD COLUMN fair_group TEXT NOT NULL DEFAULT ''",
    "fair_cap": "ALTER TABLE tasks ADD COLUMN fair_cap INTEGER NOT NULL DEFAULT 0",
    # what a task's submission stored, counted against its owner's share of the queue (0 before)
    "queued_bytes": "ALTER TABLE tasks ADD COLUMN queued_bytes INTEGER NOT NULL DEFAULT 0",
    # the task's create_time in Unix microseconds, for ListTasks' time filters (filled in at open)
    "created_us": "ALTER TABLE tasks ADD COLUMN created_us INTEGER NOT NULL DEFAULT 0",
}
# The fair queue (see queue.py): each group with tasks queued at a priority has its turn there;
# triggers give a group its turn whenever one of its tasks is queued, however that happens, and
# give a group blocked at its cap its turn back when one of its running tasks stops counting.
ADDED_INDEXES = f"""
CREATE INDEX IF NOT EXISTS tasks_due ON tasks (due_at) WHERE due_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS tasks_reruns ON tasks (rerun_of) WHERE rerun_of IS NOT NULL;
CREATE INDEX IF NOT EXISTS tasks_created ON tasks (created_us);
CREATE INDEX IF NOT EXISTS tasks_fair ON tasks (fair_group, priority, seq) WHERE queued = 1;
CREATE INDEX IF NOT EXISTS tasks_by_group ON tasks (fair_group, status) WHERE fair_cap > 0;
DROP INDEX IF EXISTS tasks_queued_by_owner;
DROP INDEX IF EXISTS kept_events_by_time;
CREATE INDEX IF NOT EXISTS tasks_queued_bytes_by_owner ON tasks (owner, queued_bytes) WHERE queued = 1;
CREATE TABLE IF NOT EXISTS task_labels (
  key TEXT NOT NULL, value TEXT NOT NULL, seq INTEGER NOT NULL, task_id TEXT NOT NULL,
  PRIMARY KEY (key, value, seq)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS task_labels_by_task ON task_labels (task_id);
CREATE TABLE IF NOT EXISTS fair_turns (
  priority INTEGER NOT NULL, grp TEXT NOT NULL, turn INTEGER NOT NULL, blocked INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (priority, grp)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS fair_turns_order ON fair_turns (blocked, priority DESC, turn);
CREATE INDEX IF NOT EXISTS fair_turns_last ON fair_turns (turn);
CREATE TRIGGER IF NOT EXISTS fair_on_insert AFTER INSERT ON tasks WHEN NEW.queued = 1 BEGIN
  INSERT OR IGNORE INTO fair_turns VALUES
    (NEW.priority, NEW.fair_group, (SELECT COALESCE(MAX(turn), 0) + 1 FROM fair_turns), 0);
END;
CREATE TRIGGER IF NOT EXISTS fair_on_queue AFTER UPDATE OF queued ON tasks
  WHEN NEW.queued = 1 AND OLD.queued = 0 BEGIN
  INSERT OR IGNORE INTO fair_turns VALUES
    (NEW.priority, NEW.fair_group, (SELECT COALESCE(MAX(turn), 0) + 1 FROM fair_turns), 0);
END;
CREATE TRIGGER IF NOT EXISTS fair_on_release AFTER UPDATE OF status, lease_expires ON tasks
  WHEN OLD.fair_cap > 0 AND OLD.lease_expires IS NOT NULL
  AND (NEW.lease_expires IS NULL OR NEW.status NOT IN ({PENDING}, {RUNNING})) BEGIN
  UPDATE fair_turns SET blocked = 0 WHERE grp = OLD.fair_group AND blocked = 1;
END;
"""


class SqliteDatabase:
    """The connection, its thread, and the event logs this process follows."""

    def __init__(
        self,
        connection: sqlite3.Connection,
        worker: StoreThread,
        retention_seconds: float,
        lock: StoreLock | None = None,
    ) -> None:
        self.connection = connection
        self.worker = worker
        self.retention_seconds = retention_seconds
        self.followers = Followers()
        self.lock = lock  # this process's hold on the file (None in memory)
        self.closed = False

    @classmethod
    async def open(cls, path: str, retention_seconds: float = 7 * 24 * 3600.0) -> SqliteDatabase:
        """Open (or create) the file at `path` (":memory:" or "" for a private in-memory one).
        Refuses a file written with another state layout, or that another process has open."""
        worker = StoreThread("sqlite-store")
        lock = None
        try:
            if path not in ("", ":memory:"):
                lock = await worker.run(lambda: StoreLock.take(Path(path).resolve()))
            connection = await worker.run(lambda: _connect(path))
        except BaseException:
            await worker.stop()
            if lock is not None:
                lock.release()
            raise
        return cls(connection, worker, retention_seconds, lock)

    async def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work` on the store's thread; a database error is UNAVAILABLE, and leaves nothing half done."""

        def guarded(db: sqlite3.Connection) -> T:
            try:
                return work(db)
            except sqlite3.Error as exc:
                if db.in_transaction:
                    db.rollback()
                if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
                    full = f"the SQLite store is full ({exc}): nothing was written; retry once it has room"
                    raise StoreFull(full) from exc
                raise Unavailable(f"sqlite store: {exc}") from exc

        return await self.worker.run(lambda: guarded(self.connection))

    async def rows(self, sql: str, args: Sequence[object] = ()) -> list[Any]:
        return await self.run(lambda db: db.execute(sql, args).fetchall())

    async def write(self, sql: str, args: Sequence[object] = ()) -> int:
        def write(db: sqlite3.Connection) -> int:
            with db:
                return int(db.execute(sql, args).rowcount)

        return await self.run(write)

    def written(self, task_id: str, events: Sequence[task_pb2.TaskEvent]) -> None:
        """Events this process just wrote (committed) reach its watchers."""
        self.followers.add(task_id, events)

    async def ping(self) -> None:
        await self.rows("SELECT 1")

    async def close(self) -> None:
        """Close the connection, end its thread and let the file go; closing again does nothing
        (it waited for the ended thread, 5 s per stop of a stopped server)."""
        if self.closed:
            return
        self.closed = True
        await self.run(lambda db: db.close())
        await self.worker.stop()
        if self.lock is not None:
            self.lock.release()


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
    had_waited = db.execute("SELECT 1 FROM sqlite_master WHERE name='waited_events'").fetchone() is not None
    had_slots = db.execute("SELECT 1 FROM sqlite_master WHERE name='kept_slots'").fetchone() is not None
    db.executescript(SCHEMA)
    if not had_waited:
        _record_waited_events(db)
    if not had_slots:  # events kept before the slots were listed go within the longest lookback there is
        with db:
            db.execute(
                "INSERT OR IGNORE INTO kept_slots SELECT name, slot, MAX(time_ms), MAX(time_ms) + ?"
                " FROM kept_events GROUP BY name, slot",
                (LONGEST_LOOKBACK_MS,),
            )
    columns = {row[1] for row in db.execute("PRAGMA table_info(tasks)")}
    for column, alter in ADDED_COLUMNS.items():
        if column not in columns:
            db.execute(alter)
    if "refused" not in {row[1] for row in db.execute("PRAGMA table_info(schedules)")}:
        db.execute("ALTER TABLE schedules ADD COLUMN refused INTEGER NOT NULL DEFAULT 0")
        db.execute("ALTER TABLE schedules ADD COLUMN refusals TEXT NOT NULL DEFAULT '[]'")
    if "latest_run" not in {row[1] for row in db.execute("PRAGMA table_info(schedules)")}:
        # the newest run that started a task, [fire ms, task id], kept however many skips follow it
        db.execute("""ALTER TABLE schedules ADD COLUMN latest_run TEXT NOT NULL DEFAULT '[0, ""]'""")
    if "deleted_at" not in {row[1] for row in db.execute("PRAGMA table_info(workflows)")}:
        # when DeleteWorkflow retired a version (its tasks still run it); NULL: not deleted
        db.execute("ALTER TABLE workflows ADD COLUMN deleted_at REAL")
    # the deleted versions a purge looks at (see SqliteWorkflows.purge_deleted)
    db.execute("CREATE INDEX IF NOT EXISTS workflows_deleted ON workflows (deleted_at) WHERE deleted_at IS NOT NULL")
    if "held_bytes" not in {row[1] for row in db.execute("PRAGMA table_info(signals)")}:
        # the bytes of a task's signals through each one (its last says what the task holds)
        db.execute("ALTER TABLE signals ADD COLUMN held_bytes INTEGER NOT NULL DEFAULT 0")
    if "used" not in {row[1] for row in db.execute("PRAGMA table_info(rate_limits)")}:
        db.execute("ALTER TABLE rate_limits ADD COLUMN used REAL NOT NULL DEFAULT 0")
        db.execute(
            "UPDATE rate_limits SET used=(SELECT COALESCE(SUM(units), 0) FROM rate_grants g"
            " WHERE g.key=rate_limits.key)"
        )
    had_labels = db.execute("SELECT 1 FROM sqlite_master WHERE name='task_labels'").fetchone() is not None
    db.executescript(ADDED_INDEXES)
    if had_tasks and not had_labels:
        _index_labels(db)
    if had_tasks:
        _fill_creation_times(db)
    with db:
        db.execute("INSERT OR IGNORE INTO meta VALUES ('layout', ?)", (str(LAYOUT_VERSION),))
        # One process owns the file (file_lock.py), so a lease found at open belongs to a process that is gone:
        # expire them all now, and the dispatcher resumes those tasks at once.
        db.execute("UPDATE tasks SET lease_expires = 0 WHERE lease_expires IS NOT NULL")
        db.execute(
            "INSERT OR IGNORE INTO fair_turns SELECT priority, fair_group, MIN(seq), 0 FROM tasks"
            " WHERE queued = 1 GROUP BY priority, fair_group"
        )
    return db


def _fill_creation_times(db: sqlite3.Connection) -> None:
    """Copy the create_time of each task whose row has none into it, a batch at a time: every task
    of a file from before the column (once, as it is added), and any an older server stored since
    (a rolling upgrade rolled back); found by the column's index, so a file without any costs a lookup."""
    last = -1
    while True:
        rows = db.execute(
            "SELECT seq, fixed FROM tasks WHERE created_us=0 AND seq > ? ORDER BY seq LIMIT 1000", (last,)
        ).fetchall()
        if not rows:
            return
        with db:
            db.executemany(
                "UPDATE tasks SET created_us=? WHERE seq=?",
                [(task_pb2.Task.FromString(fixed).create_time.ToMicroseconds(), seq) for seq, fixed in rows],
            )
        last = rows[-1][0]


def record_waited_events(db: sqlite3.Connection, workflow: workflow_pb2.Workflow) -> None:
    """Record the events `workflow`'s waits take, keeping the longest lookback of each (see
    WorkflowStore.event_interest); within the caller's transaction."""
    db.executemany(
        "INSERT INTO waited_events VALUES (?, ?) ON CONFLICT (event) DO UPDATE SET"
        " lookback=MAX(lookback, excluded.lookback)",
        list(waited_events(workflow).items()),
    )
    db.executemany(  # and those its cancel_on names (no version from before cancel_on names one)
        "INSERT OR IGNORE INTO cancelling_events VALUES (?)", [(cancel.event,) for cancel in workflow.cancel_on]
    )


def _record_waited_events(db: sqlite3.Connection) -> None:
    """Record the events every stored version waits for (once, as the table is made: a file from
    before it may hold tasks waiting for events)."""
    with db:
        for (data,) in db.execute("SELECT data FROM workflows").fetchall():
            record_waited_events(db, workflow_pb2.Workflow.FromString(data))


def _index_labels(db: sqlite3.Connection) -> None:
    """Index the labels of the tasks stored before the label index existed (once, as it is made)."""
    with db:
        for seq, task_id, fixed in db.execute("SELECT seq, task_id, fixed FROM tasks"):
            labels = task_pb2.Task.FromString(fixed).labels
            if labels:
                db.executemany(
                    "INSERT OR IGNORE INTO task_labels VALUES (?,?,?,?)",
                    [(key, value, seq, task_id) for key, value in labels.items()],
                )
