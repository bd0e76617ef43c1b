"""Stores: where workflows, task snapshots, event logs, the queue and the registry live.

`open_store(url)` picks the backend: `sqlite:///path` (embedded default), `redis://...` (one
Redis node) or `redis-cluster://host:port[,host:port...]` (a Redis Cluster).
"""

from __future__ import annotations

from mcp_server.engine.ports import Store


async def open_store(url: str, retention_seconds: float = 7 * 24 * 3600.0) -> Store:
    """Open the store named by `url`; finished tasks are kept `retention_seconds`.
    Raises ValueError for an unknown scheme."""
    if url.startswith("sqlite://"):
        from mcp_server.state.sqlite import SqliteStore

        return await SqliteStore.open(url.removeprefix("sqlite://"), retention_seconds)
    if url.startswith(("redis://", "rediss://", "unix://", "redis-cluster://")):
        from mcp_server.state.redis import RedisStore

        return await RedisStore.open(url, retention_seconds)
    raise ValueError(
        f"unknown store URL {url!r}: use sqlite:///PATH, redis://HOST:PORT/DB or redis-cluster://HOST:PORT[,HOST:PORT...]"
    )
