"""What every port of the Redis store shares: the client (one node or a cluster), the lane for
the hot scripts, the key layout, and how a command's failure becomes the store's error.

Every write that must be atomic is one Lua script on the keys of one partition (see layout.py
for the keys; each port module holds the scripts it runs). On a cluster
(`redis-cluster://`), redis-py's RedisCluster routes each script by its keys (all in one slot
by design) and follows the cluster through failovers; calls that span partitions go out
together (a pipeline on one node, concurrent calls on a cluster). With `wait_replicas=N`, a
create and a checkpoint count as done only once N replicas have them (WAIT, sent on the
connection that wrote).
"""

from __future__ import annotations

import asyncio
import contextlib
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.cluster import PipelineCommand, RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import (
    AskError,
    MovedError,
    NoScriptError,
    OutOfMemoryError,
    RedisClusterException,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from mcp_server.errors import CancelRequested, LeaseLost, StoreFull, Unavailable
from mcp_server.state.redis.lane import RedisLane
from mcp_server.state.redis.layout import Layout

# how long a write waits for its replicas (wait_replicas) before it is retried
WAIT_TIMEOUT_MS = 2000
CANCEL_REQUESTED = "CANCEL_REQUESTED "  # a checkpoint refused: the error reply's prefix, then the reason
# finished tasks' keys also carry a TTL this much past the retention, in case no replica purges them
BACKSTOP_MS = 3600 * 1000
# how long a call to every master waits for one that has not answered once another has: a master
# gone silent (a frozen host, a cut network) answers nothing, and refuses nothing, until the socket
# timeout (5 s, then again on redis-py's retry)
SILENT_MASTER_GRACE = 1.0


REDIS_FULL = (
    "the Redis store is out of memory (used memory above maxmemory, and a policy that evicts nothing): "
    "nothing was written; retry once memory is freed or maxmemory raised"
)


class RedisConnection:
    """The client, the lane and the layout of one Redis store, shared by its ports."""

    def __init__(
        self,
        client: aioredis.Redis | RedisCluster,
        layout: Layout,
        retention_seconds: float = 7 * 24 * 3600.0,
        wait_replicas: int = 0,
        lane: RedisLane | None = None,
    ) -> None:
        self.r: Any = client
        self.lane = lane  # the hot write scripts' own connection (single node, plain TCP); else redis-py
        self.cluster = isinstance(client, RedisCluster)
        self.wait_replicas = wait_replicas
        self.layout = layout
        self.retention_ms = max(1, int(retention_seconds * 1000))
        self._closers: list[Callable[[], Awaitable[None]]] = []
        # on a connection of its own (see `fresh`), on a cluster: a client per node, opened when first asked
        self._own_nodes: dict[str, aioredis.Redis] | None = None

    def register(self, script: str) -> Any:
        """A Lua script, sent by its SHA (and loaded when the server does not know it: on a
        cluster, on that master alone)."""
        if self.cluster:
            return ClusterScript(self.r, script)
        return self.r.register_script(script)

    def on_close(self, closer: Callable[[], Awaitable[None]]) -> None:
        """Have `closer` run when the store closes (before the connections go)."""
        self._closers.append(closer)

    async def do(self, coro: Any) -> Any:
        """Await a redis-py call; its failure as the store's error (Unavailable, LeaseLost)."""
        try:
            return await coro
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise Unavailable(f"redis store unreachable: {exc}") from exc
        except RedisClusterException as exc:
            raise Unavailable(f"redis cluster: {exc}") from exc
        except LEAKED_CONNECTION_ERRORS as exc:
            if not raised_by_the_connection(exc):
                raise
            raise Unavailable(
                f"redis store unreachable: a connection closed under a command ({type(exc).__name__}: {exc})"
            ) from exc
        except ResponseError as exc:
            if "LEASE_LOST" in str(exc):
                raise LeaseLost("lease is no longer held") from exc
            if str(exc).startswith(CANCEL_REQUESTED):
                raise CancelRequested(str(exc).removeprefix(CANCEL_REQUESTED)) from exc
            # at maxmemory with noeviction (the policy a store needs); the lane's replies are plain
            if isinstance(exc, OutOfMemoryError) or str(exc).startswith("OOM"):
                raise StoreFull(REDIS_FULL) from exc
            raise Unavailable(f"redis store error: {exc}") from exc
        except RedisError as exc:
            raise Unavailable(f"redis store error: {exc}") from exc

    @contextlib.asynccontextmanager
    async def pipeline(self, transaction: bool = False) -> AsyncIterator[Any]:
        """A pipeline whose errors are the store's, opening included (on a cluster, opening one
        may reach a node, and fail like any command)."""
        try:
            async with self.r.pipeline(transaction=transaction) as pipe:
                yield pipe
        except (RedisError, RedisClusterException, OSError, *LEAKED_CONNECTION_ERRORS) as exc:
            await self.do(_raise(exc))

    def script(self, script: Any, keys: list[str], args: list[Any]) -> Awaitable[Any]:
        """Run a script that is safe to send twice (fenced, or idempotent): through the lane when
        there is one, else redis-py."""
        if self.lane is not None:
            return self.lane.evalsha(script.sha, script.script, keys, args)
        return cast(Awaitable[Any], script(keys=keys, args=args))

    async def write(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        """Run a write script; with wait_replicas, return only once that many replicas have it
        (WAIT must follow the write on the same connection: one pipeline to the slot's master)."""
        if not self.wait_replicas:
            return await self.do(self.script(script, keys, args))
        for _ in range(3):
            if self.cluster:
                node = self.r.get_node_from_key(keys[0])
                commands = [
                    PipelineCommand(0, "EVALSHA", script.sha, len(keys), *keys, *args),
                    PipelineCommand(1, "WAIT", self.wait_replicas, WAIT_TIMEOUT_MS),
                ]
                await self.do(node.execute_pipeline(commands))
                result, acked = commands[0].result, commands[1].result
                if isinstance(result, NoScriptError):
                    await self.do(script.load_on(node))
                    continue
            else:
                async with self.pipeline(transaction=False) as pipe:
                    pipe.evalsha(script.sha, len(keys), *keys, *args)
                    pipe.execute_command("WAIT", self.wait_replicas, WAIT_TIMEOUT_MS)
                    result, acked = await self.do(pipe.execute(raise_on_error=False))
            if isinstance(result, NoScriptError):
                await self.do(self.r.script_load(script.script))
                continue
            if isinstance(result, Exception):
                if self.cluster and isinstance(result, (MovedError, AskError, RedisConnectionError)):
                    await self.do(self.r.nodes_manager.initialize())  # the slot moved (a failover): look again
                    continue
                await self.do(_raise(result))
            if isinstance(acked, Exception) or int(acked) < self.wait_replicas:
                raise Unavailable(
                    f"a write reached {acked} of the {self.wait_replicas} replicas it must reach "
                    f"within {WAIT_TIMEOUT_MS} ms (wait_replicas); it is retried"
                )
            return result
        raise Unavailable("the cluster moved the slot under a write three times; it is retried")

    async def scripts(self, calls: Sequence[tuple[Any, list[str], list[Any]]]) -> list[Any]:
        """Run one script per partition: in one pipeline on a single node, as concurrent calls
        on a cluster (redis-py routes each by its keys; scripts do not go into its pipelines)."""
        if self.cluster:
            return list(await self.do(asyncio.gather(*(script(keys=keys, args=args) for script, keys, args in calls))))
        # EVALSHA, not redis-py's Script on a pipeline: that asks SCRIPT EXISTS first, a second round
        # trip every time. A script the node lost (a restart) is loaded, and the calls it refused sent again.
        replies: list[Any] = [None] * len(calls)
        unsent = list(range(len(calls)))
        for attempt in range(2):
            if attempt:
                for script in {calls[i][0].sha: calls[i][0] for i in unsent}.values():
                    await self.do(self.r.script_load(script.script))
            async with self.pipeline(transaction=False) as pipe:
                for i in unsent:
                    script, keys, args = calls[i]
                    pipe.evalsha(script.sha, len(keys), *keys, *args)
                for i, reply in zip(unsent, await self.do(pipe.execute(raise_on_error=False)), strict=True):
                    replies[i] = reply
            unsent = [i for i in unsent if isinstance(replies[i], NoScriptError)]
            if not unsent:
                break
        for reply in replies:
            if isinstance(reply, Exception):
                await self.do(_raise(reply))
        return replies

    async def scripts_answered(self, calls: Sequence[tuple[Any, list[str], list[Any]]], grace: float) -> list[Any]:
        """Run one script per partition like `scripts`; on a cluster, a partition whose master does
        not answer (or not within `grace` of another) gives None, unless none answers. For sweeps
        whose work is done by the scripts that ran, whatever the others did."""
        if not self.cluster:
            return await self.scripts(calls)
        return await self.each_answered([script(keys=keys, args=args) for script, keys, args in calls], grace)

    async def writes_answered(self, calls: Sequence[tuple[Any, list[str], list[Any]]], grace: float) -> list[Any]:
        """Run one write script per partition like `scripts_answered`; with `wait_replicas`, each
        counts as answered once that many replicas have it (a claim its master acknowledged and
        then lost in a failover would run a task the new master still has queued)."""
        if not self.wait_replicas:
            return await self.scripts_answered(calls, grace)
        writes = [self.write(script, keys, args) for script, keys, args in calls]
        return await self.each_answered(writes, grace if self.cluster else None)

    async def each_answered(self, calls: Sequence[Awaitable[Any]], grace: float | None = None) -> list[Any]:
        """Await calls to several nodes of a cluster together: a call whose node does not answer
        gives None, unless none answers (the store is away: its error is raised). With `grace`, a
        call still out that long after another has answered gives None too (its node went silent:
        a frozen host answers nothing, and refuses nothing, until the socket timeout)."""
        if not calls:
            return []
        pending = [asyncio.ensure_future(self.do(call)) for call in calls]
        try:
            if grace is None:
                await asyncio.wait(pending)
            else:
                waiting = set(pending)
                while waiting and not any(c.done() and c.exception() is None for c in pending):
                    _, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if waiting:
                    await asyncio.wait(waiting, timeout=grace)
        finally:
            for call in pending:
                call.cancel()
        silent = Unavailable(f"a node gave no answer within {grace} s of the others")
        replies = [
            (call.exception() or call.result()) if call.done() and not call.cancelled() else silent for call in pending
        ]
        for reply in replies:
            if isinstance(reply, BaseException) and not isinstance(reply, Unavailable):
                raise reply
        if all(isinstance(reply, Unavailable) for reply in replies):
            raise replies[0]
        return [None if isinstance(reply, Unavailable) else reply for reply in replies]

    async def scripts_as_answered(
        self, calls: Sequence[tuple[Any, list[str], list[Any]]]
    ) -> AsyncIterator[tuple[int, Any]]:
        """Run one script per partition like `scripts`, yielding (index, reply) as they answer: on a
        cluster, a node that is away holds up only its own partitions' replies, and the first
        failure is raised once every other call has answered."""
        if not self.cluster:
            for index, reply in enumerate(await self.scripts(calls)):
                yield index, reply
            return

        async def one(index: int, script: Any, keys: list[str], args: list[Any]) -> tuple[int, Any]:
            if self._own_nodes is None:
                return index, await self.do(script(keys=keys, args=args))
            return index, await self.do(script(keys=keys, args=args, client=self._own_node(keys[0])))

        pending = [asyncio.ensure_future(one(index, *call)) for index, call in enumerate(calls)]
        failure: Unavailable | None = None
        try:
            for answer in asyncio.as_completed(pending):
                try:
                    yield await answer
                except Unavailable as exc:
                    failure = failure or exc
        finally:
            for call in pending:
                call.cancel()
        if failure is not None:
            raise failure

    async def ping(self) -> None:
        """On a cluster, also that every slot is served (a node can answer while a slot has none)."""
        if not self.cluster:
            await self.do(self.r.ping())
            return
        info = await self.do(self.r.cluster_info(target_nodes=RedisCluster.RANDOM))
        if info.get("cluster_state") != "ok":
            assigned = info.get("cluster_slots_ok", "?")
            raise Unavailable(
                f"redis cluster state is {info.get('cluster_state')}: {assigned} of 16384 slots are served"
            )

    @contextlib.asynccontextmanager
    async def fresh(self) -> AsyncIterator[RedisConnection]:
        """This store on a connection opened for the caller alone and closed after it: a hedge for
        a call that may have gone out on a connection gone silent (its peer gone, nothing refused
        until the socket timeout), which those idle in the pool may have too. On a cluster, one
        such connection per master asked, for `scripts_as_answered` (what a hedge sends); the
        slots are routed as the shared client knows them, and a slot that moved meanwhile fails
        its call, which the shared client's ask follows."""
        if self.cluster:
            own = RedisConnection(self.r, self.layout, wait_replicas=self.wait_replicas)
            own._own_nodes = {}
            try:
                yield own
            finally:
                for client in own._own_nodes.values():
                    await client.aclose()
            return
        pool = self.r.connection_pool
        client = _one_off(pool.connection_class, pool.connection_kwargs)
        try:
            yield RedisConnection(client, self.layout, wait_replicas=self.wait_replicas)
        finally:
            await client.aclose()

    def _own_node(self, key: str) -> aioredis.Redis:
        """The client of this connection's own for the master of `key`'s slot."""
        assert self._own_nodes is not None
        node = self.r.get_node_from_key(key)
        if node.name not in self._own_nodes:
            self._own_nodes[node.name] = _one_off(node.connection_class, node.connection_kwargs)
        return self._own_nodes[node.name]

    async def close(self) -> None:
        for closer in self._closers:
            await closer()
        if self.lane is not None:
            await self.lane.close()
        await self.r.aclose()


async def _raise(error: Exception) -> Any:
    raise error


class ClusterScript(AsyncScript):
    """A script on a cluster that a master lacking it (a replica just promoted, a node restarted)
    loads alone: redis-py loads it on every master, where one gone silent holds the call up until
    its socket timeout, twice."""

    async def __call__(self, keys: Any = None, args: Any = None, client: Any = None) -> Any:
        client = self.registered_client if client is None else client
        if not isinstance(client, RedisCluster) or not keys:
            return await super().__call__(keys, args, client)
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *(args or []))
        except NoScriptError:
            await self.load_on(client.get_node_from_key(keys[0]))
            return await client.evalsha(self.sha, len(keys), *keys, *(args or []))

    async def load_on(self, node: Any) -> None:
        """Load this script on one master of the cluster."""
        await cast(RedisCluster, self.registered_client).execute_command("SCRIPT LOAD", self.script, target_nodes=node)


def _one_off(connection_class: Any, connection_kwargs: dict[str, Any]) -> aioredis.Redis:
    """A client of one connection (concurrent calls take turns on it), made as a pool's or a
    cluster node's connections are (TLS, credentials)."""
    return aioredis.Redis.from_pool(
        aioredis.BlockingConnectionPool(
            connection_class=connection_class, max_connections=1, timeout=None, **connection_kwargs
        )
    )


# redis-py 8.1 lets a write on a connection the peer just closed (a failover, a restart) escape
# from the transport as AttributeError or TypeError, not as a ConnectionError (redis/redis-py#4287,
# fixed after 8.1); on uvloop the transport raises RuntimeError ("unable to perform operation on
# <TCPTransport closed=True>; the handler is closed"). Raised inside the connection code, each is a
# connection that failed.
LEAKED_CONNECTION_ERRORS = (AttributeError, TypeError, RuntimeError)


def raised_by_the_connection(error: BaseException) -> bool:
    """Whether `error` was raised inside redis-py's, asyncio's or uvloop's connection code (not ours)."""
    frames = traceback.extract_tb(error.__traceback__)
    return bool(frames) and any(part in frames[-1].filename for part in ("/redis/", "/asyncio/", "uvloop/"))
