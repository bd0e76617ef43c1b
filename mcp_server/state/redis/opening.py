"""Reaching a Redis store: one node or a cluster, with the timeouts and retries the store relies
on, and agreeing with what is already there on the state layout (its version and partition
count), so a build never reads a store written in another layout."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from mcp_server.errors import StartupError, Unavailable
from mcp_server.state.common import LAYOUT_MISMATCH, LAYOUT_VERSION
from mcp_server.state.redis.layout import DEFAULT_PARTITIONS, Layout
from mcp_server.state.redis.packed import PackedConnection


async def connect_node(url: str, where: str) -> aioredis.Redis:
    """One Redis node. A bounded pool makes a command wait for a free connection rather than
    fail. A command that meets a dead connection (Redis restarted) reconnects and is sent once
    more: every script here is safe to repeat (fenced, or idempotent by key or by sequence)."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=64,
        timeout=10,
        socket_timeout=5,
        socket_connect_timeout=2,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=1),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        connection_class=PackedConnection,
    )
    client = aioredis.Redis(connection_pool=pool)
    try:
        if (await client.info("cluster")).get("cluster_enabled"):
            raise StartupError(
                f"{where} is a node of a Redis Cluster: use redis-cluster://{where} (redis:// means a single node)"
            )
    except RedisError:
        pass  # unreachable now: the server starts and reports UNAVAILABLE until Redis answers
    except BaseException:
        await client.aclose()
        raise
    return client


async def connect_cluster(where: str) -> RedisCluster:
    """A Redis Cluster from any of its nodes (`host:port,host:port`); refuses to start when none
    answers, or when they are not a cluster."""
    nodes = []
    for address in filter(None, where.split(",")):
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise StartupError(f"redis-cluster node {address!r} must be HOST:PORT")
        nodes.append(ClusterNode(host, int(port)))
    if not nodes:
        raise StartupError("redis-cluster:// needs at least one HOST:PORT")
    client = RedisCluster(
        startup_nodes=nodes,
        require_full_coverage=True,
        socket_timeout=5,
        socket_connect_timeout=2,
        max_connections=64,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=6),
    )
    try:
        await client.initialize()
    except (RedisClusterException, RedisError, OSError) as exc:
        await client.aclose()
        tried = ", ".join(f"{n.host}:{n.port}" for n in nodes)
        if "cluster mode is not enabled" in str(exc).lower() or "cluster support disabled" in str(exc).lower():
            raise StartupError(
                f"{tried} is not a Redis Cluster (cluster mode is not enabled): use redis://{nodes[0].host}:"
                f"{nodes[0].port} for a single node"
            ) from None
        raise StartupError(f"no Redis Cluster node answered (tried {tried}): {exc}") from None
    return client


EVICTING = (
    "Redis's maxmemory-policy is {policies}: when memory runs short it may evict the store's keys "
    "(tasks, leases, request ids) and lose work; set maxmemory-policy noeviction (the server then "
    "refuses writes with STORE_FULL until memory is freed)"
)


async def eviction_warning(client: aioredis.Redis | RedisCluster) -> str | None:
    """What to warn of when Redis (any master of a cluster) may evict keys: every policy but
    noeviction may, the volatile ones too (the store sets TTLs on request ids and finished
    tasks). None when all is well, or when Redis cannot be asked now (INFO refused, unreachable)."""
    try:
        if isinstance(client, RedisCluster):
            replies = await client.info("memory", target_nodes=RedisCluster.PRIMARIES)
            infos = list(replies.values())
        else:
            infos = [await client.info("memory")]
    except (RedisClusterException, RedisError, OSError):
        return None
    policies = {str(info.get("maxmemory_policy", "noeviction")) for info in infos if isinstance(info, dict)}
    policies.discard("noeviction")
    return EVICTING.format(policies=", ".join(sorted(policies))) if policies else None


async def agree_on_layout(client: aioredis.Redis | RedisCluster, prefix: str, wanted: int | None) -> Layout:
    """The layout this store was created with (recording ours if it is new); refuse another."""
    if wanted is not None:
        Layout(prefix, wanted)  # validates the prefix and the count
    layout_key = Layout(prefix).meta
    try:
        if await client.exists(f"{prefix}tasks") or await client.exists(f"{prefix}queue"):  # keys only layout 1 wrote
            raise StartupError(
                f"the Redis store at prefix {prefix!r} " + LAYOUT_MISMATCH.format(found=1, wanted=LAYOUT_VERSION)
            )
        await client.hsetnx(layout_key, "version", LAYOUT_VERSION)
        await client.hsetnx(layout_key, "partitions", wanted or DEFAULT_PARTITIONS)
        meta = {text(k): text(v) for k, v in (await client.hgetall(layout_key)).items()}
    except RedisError as exc:
        raise Unavailable(f"redis store unreachable: {exc}") from exc
    if meta.get("version") != str(LAYOUT_VERSION):
        raise StartupError(
            f"the Redis store at prefix {prefix!r} "
            + LAYOUT_MISMATCH.format(found=meta.get("version"), wanted=LAYOUT_VERSION)
        )
    stored = int(meta["partitions"])
    if wanted is not None and wanted != stored:
        raise StartupError(
            f"the Redis store at prefix {prefix!r} has {stored} partitions; partitions={wanted} cannot change that"
        )
    return Layout(prefix, stored)


def text(value: bytes | str) -> str:
    """A Redis reply as text."""
    return value.decode() if isinstance(value, bytes) else value
