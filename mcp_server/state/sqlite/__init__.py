"""The embedded store: one SQLite file (database.py), a module per port."""

from __future__ import annotations

from mcp_server.engine.ports import Store
from mcp_server.state.sqlite.bulk import SqliteBulkActions
from mcp_server.state.sqlite.cache import SqliteStepCache
from mcp_server.state.sqlite.capacity import SqliteCapacity
from mcp_server.state.sqlite.database import SqliteDatabase
from mcp_server.state.sqlite.kept_events import SqliteKeptEvents
from mcp_server.state.sqlite.queue import SqliteQueue
from mcp_server.state.sqlite.ratelimits import SqliteRateLimits
from mcp_server.state.sqlite.registry import SqliteRegistry
from mcp_server.state.sqlite.schedules import SqliteSchedules
from mcp_server.state.sqlite.tasks import SqliteTasks
from mcp_server.state.sqlite.waits import SqliteWaits
from mcp_server.state.sqlite.workflows import SqliteWorkflows


async def open_sqlite(path: str, retention_seconds: float = 7 * 24 * 3600.0) -> Store:
    """The store in the SQLite file at `path` (":memory:" for a private in-memory one); finished
    tasks are kept `retention_seconds`. Raises StartupError for a file it cannot open or that
    holds another state layout."""
    db = await SqliteDatabase.open(path, retention_seconds)
    return Store(
        workflows=SqliteWorkflows(db),
        tasks=SqliteTasks(db),
        queue=SqliteQueue(db),
        registry=SqliteRegistry(db),
        capacity=SqliteCapacity(),
        waits=SqliteWaits(db),
        kept_events=SqliteKeptEvents(db),
        rate_limits=SqliteRateLimits(db),
        schedules=SqliteSchedules(db),
        bulk_actions=SqliteBulkActions(db),
        step_cache=SqliteStepCache(db),
        connection=db,
    )
