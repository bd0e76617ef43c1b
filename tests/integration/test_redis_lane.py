"""The Redis lane (one multiplexed connection for the hot write scripts) against a real Redis:
every caller gets its own reply however many are in flight, an error reply fails only its
caller, a flushed script is loaded again, a killed connection is replaced, a server that stops
answering fails the commands waiting on it, and the database in the URL is the one written."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from mcp_server.state.redis.lane import LANE_CLIENT_NAME, LaneClosed, RedisLane

pytestmark = pytest.mark.asyncio
COUNT_UP = "return redis.call('INCRBY', KEYS[1], ARGV[1])"


def lane_for(url: str, **options: object) -> RedisLane:
    """A lane to the test Redis, as the store makes one from its URL."""
    pool = aioredis.ConnectionPool.from_url(url)
    return RedisLane.for_pool({**pool.connection_kwargs, **options})


@pytest.fixture
async def redis_client(redis_base_url):
    client = aioredis.Redis.from_url(redis_base_url)
    yield client
    await client.aclose()


@pytest.fixture
async def lane(redis_base_url):
    made = lane_for(redis_base_url)
    yield made
    await made.close()


@pytest.fixture
async def key(redis_client):
    """A fresh key, deleted afterwards."""
    name = f"mcptest:lane:{uuid.uuid4().hex}"
    yield name
    await redis_client.delete(name)


async def test_every_caller_gets_its_own_reply_with_hundreds_in_flight(lane, key):
    replies = await asyncio.gather(*(lane.call("ECHO", f"reply-{i}") for i in range(500)))
    assert replies == [f"reply-{i}".encode() for i in range(500)]
    counts = await asyncio.gather(*(lane.call("INCR", key) for _ in range(200)))
    assert counts == list(range(1, 201))  # in order, each once


async def test_an_error_reply_fails_only_its_own_caller(redis_client, lane, key):
    await redis_client.set(key, "text")
    results = await asyncio.gather(
        lane.call("ECHO", "before"), lane.call("INCR", key), lane.call("ECHO", "after"), return_exceptions=True
    )
    assert results[0] == b"before" and results[2] == b"after"
    assert isinstance(results[1], ResponseError) and "not an integer" in str(results[1])


async def test_a_script_flushed_from_the_server_is_loaded_again(redis_client, lane, key):
    sha = await redis_client.script_load(COUNT_UP)
    assert await lane.evalsha(sha, COUNT_UP, [key], [2]) == 2
    await redis_client.script_flush()
    assert await lane.evalsha(sha, COUNT_UP, [key], [3]) == 5


async def test_a_killed_connection_is_replaced_and_the_command_sent_once_more(redis_client, lane):
    assert await lane.call("PING") == b"PONG"
    clients = await redis_client.client_list()
    mine = [c["id"] for c in clients if c.get("name") == LANE_CLIENT_NAME and c["cmd"] == "ping"]
    assert mine, clients
    for client_id in mine:
        await redis_client.client_kill_filter(_id=client_id)
    assert await lane.call("ECHO", "still here") == b"still here"


async def test_a_server_that_stops_answering_fails_the_waiting_commands():
    """A TCP server that accepts and never answers (Redis frozen): the lane gives up after its
    reply timeout, on the first connection and on the fresh one, and says so."""
    silent_connections: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        silent_connections.append(writer)
        while await reader.read(65536):
            pass

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    lane = RedisLane("127.0.0.1", port, connect_timeout=1.0, reply_timeout=0.3)
    lane._handshake = lambda: []  # type: ignore[method-assign]  # the silent server would not answer CLIENT SETNAME either
    try:
        with pytest.raises(LaneClosed, match="did not answer"):
            await asyncio.wait_for(lane.call("PING"), timeout=10)  # a bound for the test, not a timing
        assert len(silent_connections) == 2  # the command was sent once more, on a fresh connection
    finally:
        await lane.close()
        server.close()
        await server.wait_closed()


async def test_the_database_of_the_url_is_the_one_written(redis_base_url):
    lane = lane_for(redis_base_url, db=5)
    where = aioredis.ConnectionPool.from_url(redis_base_url).connection_kwargs
    other = aioredis.Redis(host=where["host"], port=where["port"], db=5)
    key = f"mcptest:lane:{uuid.uuid4().hex}"
    try:
        await lane.call("SET", key, "in five")
        assert await other.get(key) == b"in five"
    finally:
        await other.delete(key)
        await other.aclose()
        await lane.close()


async def test_a_refused_handshake_is_reported(redis_base_url):
    lane = lane_for(redis_base_url, password="not-the-password")
    try:
        with pytest.raises(LaneClosed, match="AUTH"):
            await lane.call("PING")
    finally:
        await lane.close()


async def test_a_peer_that_does_not_speak_redis_fails_the_command_with_a_clear_error(redis_base_url):
    """A server that answers garbage (not RESP): the waiting command fails with LaneClosed
    naming it, instead of hanging or being handed someone else's reply."""

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await writer.drain()
        await reader.read(65536)

    server = await asyncio.start_server(garbage, "127.0.0.1", 0)
    lane = RedisLane("127.0.0.1", server.sockets[0].getsockname()[1], reply_timeout=5)
    lane._handshake = lambda: []  # type: ignore[method-assign]
    try:
        with pytest.raises(LaneClosed, match="out of step"):
            await asyncio.wait_for(lane.call("PING"), timeout=10)
    finally:
        await lane.close()
        server.close()
        await server.wait_closed()
