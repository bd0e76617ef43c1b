"""The store on uvloop (the server's default event loop), against a real Redis: a connection
closed under a command is the store being unreachable for that call (UNAVAILABLE, and the run
waits), never an internal error. uvloop's transport raises RuntimeError where asyncio's raises
nothing or ConnectionError, and redis-py 8.1 lets it through: a killed Redis Cluster master made a
watcher's stream end INTERNAL."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
import uvloop

from mcp_server.errors import Unavailable
from mcp_server.state import open_store


def test_a_connection_closed_under_a_command_is_unavailable_then_the_store_goes_on(redis_url):
    async def scenario() -> None:
        store = await open_store(redis_url)
        try:
            await store.tasks.labels.running  # its pass over the store, done: the pool is ours alone
            conn = store.connection
            assert await conn.do(conn.r.ping())
            close_every_idle_connection(conn.r.connection_pool)  # as a dying node's: redis-py has not noticed
            with pytest.raises(Unavailable, match="a connection closed under a command"):
                await conn.do(conn.r.ping())
            await goes_on(conn)
            async with conn.pipeline() as pipe:  # a pipeline's opening and sending alike
                pipe.ping()
                close_every_idle_connection(conn.r.connection_pool)
                with pytest.raises(Unavailable):
                    await conn.do(pipe.execute())
            await goes_on(conn)
        finally:
            await store.close()

    uvloop.run(scenario())


def test_a_runtime_error_of_the_server_s_own_code_is_not_taken_for_the_store_s(redis_url):
    async def scenario() -> None:
        store = await open_store(redis_url)

        async def ours() -> None:
            raise RuntimeError("a bug of ours")

        try:
            with pytest.raises(RuntimeError, match="a bug of ours"):
                await store.connection.do(ours())
        finally:
            await store.close()

    uvloop.run(scenario())


def close_every_idle_connection(pool: Any) -> None:
    idle = list(pool._available_connections)
    assert idle  # the next command takes one of them
    for connection in idle:
        connection._writer.transport.close()


async def goes_on(conn: Any) -> None:
    """Each dead connection fails one command and is made anew; then commands go through."""
    for _ in range(len(conn.r.connection_pool._available_connections) + 1):
        with contextlib.suppress(Unavailable):
            assert await conn.do(conn.r.ping())
            return
    raise AssertionError("the store did not go on")
