"""The production store: Redis through redis.asyncio, on one node or on a Redis Cluster; several
orchestrator replicas share it. `connection.py` holds what every port shares, a module per port
does its job (each with its Lua scripts beside it), `layout.py` names every key."""

from __future__ import annotations

import logging
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from mcp_server.engine.ports import Store
from mcp_server.state.redis.bulk import RedisBulkActions
from mcp_server.state.redis.cache import RedisStepCache
from mcp_server.state.redis.capacity import RedisCapacity
from mcp_server.state.redis.connection import RedisConnection
from mcp_server.state.redis.kept_events import RedisKeptEvents
from mcp_server.state.redis.lane import RedisLane
from mcp_server.state.redis.opening import agree_on_layout, connect_cluster, connect_node, eviction_warning
from mcp_server.state.redis.queue import RedisQueue
from mcp_server.state.redis.ratelimits import RedisRateLimits
from mcp_server.state.redis.registry import RedisRegistry
from mcp_server.state.redis.schedules import RedisSchedules
from mcp_server.state.redis.streams import StreamHub
from mcp_server.state.redis.tasks import RedisTasks
from mcp_server.state.redis.waits import RedisWaits
from mcp_server.state.redis.workflows import RedisWorkflows

log = logging.getLogger(__name__)


async def open_redis(url: str, retention_seconds: float = 7 * 24 * 3600.0) -> Store:
    """Connect to `url`. Query parameters: `prefix=` namespaces every key (default `mcp:`),
    `partitions=` sets the partition count of a new store (default 16; an existing store
    keeps the count it was created with), `wait_replicas=N` (see connection.py), `lane=off`
    sends the hot write scripts through redis-py too (see lane.py). Refuses a store written
    with another layout."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    prefix = query.pop("prefix", ["mcp:"])[0]
    wanted = query.pop("partitions", [""])[0]
    wait_replicas = int(query.pop("wait_replicas", ["0"])[0])
    use_lane = query.pop("lane", ["on"])[0] != "off"
    clean = urlunsplit(parts._replace(query=urlencode(query, doseq=True)))
    client: aioredis.Redis | RedisCluster
    lane = None
    if parts.scheme == "redis-cluster":
        client = await connect_cluster(parts.netloc)
    else:
        client = await connect_node(clean, parts.netloc)
        if parts.scheme == "redis" and use_lane:
            lane = RedisLane.for_pool(client.connection_pool.connection_kwargs)
    try:
        layout = await agree_on_layout(client, prefix, int(wanted) if wanted else None)
        if (warning := await eviction_warning(client)) is not None:
            log.warning(warning)
    except BaseException:
        await client.aclose()
        raise
    conn = RedisConnection(client, layout, retention_seconds, wait_replicas, lane)
    hub = StreamHub(conn)
    conn.on_close(hub.close)
    tasks = RedisTasks(conn, hub)
    tasks.labels.start()  # the labels of tasks an earlier version stored (once per store; purges retry it)
    return Store(
        workflows=RedisWorkflows(conn),
        tasks=tasks,
        queue=RedisQueue(conn, hub, tasks),
        registry=RedisRegistry(conn),
        capacity=RedisCapacity(conn),
        waits=RedisWaits(conn, hub),
        kept_events=RedisKeptEvents(conn),
        rate_limits=RedisRateLimits(conn),
        schedules=RedisSchedules(conn),
        bulk_actions=RedisBulkActions(conn),
        step_cache=RedisStepCache(conn),
        connection=conn,
    )
