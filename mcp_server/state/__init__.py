"""Stores: where workflows, task snapshots, event logs, the queue and the registry live.

`open_store(url)` picks the backend: `sqlite:///path` (embedded default), `redis://...` (one
Redis node) or `redis-cluster://host:port[,host:port...]` (a Redis Cluster).

SQLite URLs follow the convention people know from SQLAlchemy: `sqlite:///relative/path` is
relative to the working directory, `sqlite:////absolute/path` absolute, and `sqlite://` (or
`sqlite:///:memory:`) a private in-memory database.
"""

from __future__ import annotations

from pathlib import Path

from mcp_server.engine.ports import Store
from mcp_server.errors import StartupError

SQLITE_FORMS = "sqlite:///relative/path, sqlite:////absolute/path or sqlite:///:memory:"


class StoreUrlError(StartupError, ValueError):
    """A store URL this server cannot use; the message says which forms it takes."""


def sqlite_path(url: str) -> str:
    """The file a `sqlite://` URL names (":memory:" for an in-memory database). Raises
    StoreUrlError for a URL of another form (`sqlite://host/...`)."""
    rest = url.removeprefix("sqlite://")
    if rest in ("", ":memory:", "/:memory:", "/"):
        return ":memory:"
    if not rest.startswith("/"):
        raise StoreUrlError(f"store URL {url!r} names no file: use {SQLITE_FORMS}")
    return rest[1:]


def describe_store(url: str) -> str:
    """Where a store URL keeps its data, for the start-up line: the absolute file of a SQLite
    store, the URL of any other."""
    if url.startswith("sqlite://"):
        path = sqlite_path(url)
        return "SQLite in memory" if path == ":memory:" else f"SQLite file {Path(path).resolve()}"
    return url


async def open_store(url: str, retention_seconds: float = 7 * 24 * 3600.0) -> Store:
    """Open the store named by `url`; finished tasks are kept `retention_seconds`.
    Raises StartupError for a URL it cannot use or a store it cannot open (StoreUrlError for
    the former)."""
    if url.startswith("sqlite://"):
        from mcp_server.state.sqlite import open_sqlite

        return await open_sqlite(sqlite_path(url), retention_seconds)
    if url.startswith(("redis://", "rediss://", "unix://", "redis-cluster://")):
        from mcp_server.state.redis import open_redis

        return await open_redis(url, retention_seconds)
    raise StoreUrlError(
        f"unknown store URL {url!r}: use {SQLITE_FORMS}, redis://HOST:PORT/DB or redis-cluster://HOST:PORT[,HOST:PORT...]"
    )
