"""The store on uvloop (the server's default event loop), against a real Redis: a connection
closed under a command is the store being unreachable for that call (UNAVAILABLE, and the run
waits), never an internal error. uvloop's transport raises RuntimeError ("unable to perform
operation on <TCPTransport closed=True>; the handler is closed") where asyncio's raises nothing or
ConnectionError, and redis-py lets it through from a new connection's handshake: a killed Redis
Cluster master made a watcher's stream end INTERNAL. Whether a dead pooled connection gets that
far depends on redis-py's version (8.2 makes a new one when it notices), so the real scenario
asserts only what must hold on every version, and the mapping is checked apart."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
import uvloop

from mcp_server.errors import Unavailable
from mcp_server.state import open_store


def test_connections_closed_under_commands_never_surface_as_anything_but_unavailable(redis_url):
    async def scenario() -> None:
        store = await open_store(redis_url)
        try:
            await store.tasks.labels.running  # its pass over the store, done: the pool is ours alone
            conn = store.connection
            assert await conn.do(conn.r.ping())
            for _ in range(3):
                close_every_idle_connection(conn.r.connection_pool)  # as a dying node's: redis-py has not noticed
                with contextlib.suppress(Unavailable):  # or redis-py noticed, and made a new one
                    await conn.do(conn.r.ping())
                await goes_on(conn)
                async with conn.pipeline() as pipe:  # a pipeline's opening and sending alike
                    pipe.ping()
                    close_every_idle_connection(conn.r.connection_pool)
                    with contextlib.suppress(Unavailable):
                        await conn.do(pipe.execute())
                await goes_on(conn)
        finally:
            await store.close()

    uvloop.run(scenario())


def test_a_runtime_error_of_the_transport_is_unavailable_and_one_of_ours_is_not(redis_url):
    async def scenario() -> None:
        store = await open_store(redis_url)

        async def transport_closed() -> None:  # raised where uvloop raises it
            raise_from("uvloop/handles/handle.pyx", "unable to perform operation on <TCPTransport closed=True>")

        async def ours() -> None:
            raise RuntimeError("a bug of ours")

        try:
            with pytest.raises(Unavailable, match="a connection closed under a command"):
                await store.connection.do(transport_closed())
            with pytest.raises(RuntimeError, match="a bug of ours"):
                await store.connection.do(ours())
        finally:
            await store.close()

    uvloop.run(scenario())


def raise_from(filename: str, message: str) -> None:
    """Raise RuntimeError(message) from a frame of `filename` (the test's own constant source)."""
    namespace: dict[str, Any] = {}
    exec(compile(f"def fail():\n    raise RuntimeError({message!r})\n", filename, "exec"), namespace)
    namespace["fail"]()


def close_every_idle_connection(pool: Any) -> None:
    idle = list(pool._available_connections)
    assert idle  # the next command takes one of them
    for connection in idle:
        connection._writer.transport.close()


async def goes_on(conn: Any) -> None:
    """Each dead connection fails at most one command and is made anew; then commands go through."""
    for _ in range(len(conn.r.connection_pool._available_connections) + 1):
        with contextlib.suppress(Unavailable):
            assert await conn.do(conn.r.ping())
            return
    raise AssertionError("the store did not go on")
