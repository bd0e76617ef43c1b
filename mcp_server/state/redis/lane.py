"""RedisLane: one multiplexed connection for the store's hot write scripts.

redis-py's asyncio client spends about 200 us of CPU on a command on this project's bench
machine (pool, timeouts, retry wrapper, response callbacks), where packing it, writing it and
parsing the reply with hiredis take about 70 us (docs/performance.md). The lane sends the
commands of every task over one connection and hands the replies back first in, first out
(Redis answers a connection's commands in order); commands issued in the same turn of the
event loop go out in one write. The hot commands take the lane (the checkpoint and create
scripts, the latest-version lookup of a submit, the header and event reads of a watch start);
everything else, pipelines and the cluster client stay on redis-py. Never a blocking command
(XREAD BLOCK and the like): it would hold up every command behind it.

Failure: a lost connection fails every command waiting on it with LaneClosed (a redis-py
ConnectionError, so the store reports UNAVAILABLE as for any other); a command is sent once
more on a fresh connection first, which is safe because every script sent here is fenced or
idempotent. A command unanswered for `reply_timeout` closes the connection the same way.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

from mcp_server.engine.cancelling import cancel_and_wait

LANE_CLIENT_NAME = "mcp-lane"


class LaneClosed(RedisConnectionError):
    """The lane's connection was lost (or timed out) with the command unanswered."""


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.waiting: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._outgoing: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, packed: bytes) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if self.closed:
            future.set_exception(LaneClosed("the connection to Redis is closed"))
            return future
        self.waiting.append((future, time.monotonic()))
        if not self._outgoing:
            loop.call_soon(self._flush)
        self._outgoing.append(packed)
        return future

    def _flush(self) -> None:
        outgoing, self._outgoing = self._outgoing, []
        if self.transport is not None and not self.closed:
            self.transport.write(b"".join(outgoing))

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        try:
            while (reply := self.reader.gets()) is not False:
                future, _ = self.waiting.popleft()
                if not future.done():  # a caller that gave up (cancelled) leaves its reply unread
                    future.set_result(reply)
        except (hiredis.ProtocolError, IndexError) as exc:  # not Redis speaking, or a reply nobody asked for
            self.close(f"the connection to Redis is out of step ({type(exc).__name__}: {exc})")

    def connection_lost(self, exc: Exception | None) -> None:
        self.close(f"the connection to Redis was lost ({exc or 'closed'})")

    def close(self, why: str) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
        while self.waiting:
            future, _ = self.waiting.popleft()
            if not future.done():
                future.set_exception(LaneClosed(why))


class RedisLane:
    """One connection to a single Redis node (host, port, db, credentials as redis-py's pool has them)."""

    def __init__(
        self,
        host: str,
        port: int,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        connect_timeout: float = 2.0,
        reply_timeout: float = 5.0,
    ) -> None:
        self.host, self.port, self.db = host, port, db
        self.username, self.password = username, password
        self.connect_timeout, self.reply_timeout = connect_timeout, reply_timeout
        self._connection: _Connection | None = None
        self._connecting = asyncio.Lock()
        self._watchdog: asyncio.Task[None] | None = None

    @classmethod
    def for_pool(cls, kwargs: dict[str, Any]) -> RedisLane:
        """A lane to the node a redis-py pool (of a plain redis:// URL) connects to."""
        return cls(
            str(kwargs.get("host", "localhost")),
            int(kwargs.get("port", 6379)),
            int(kwargs.get("db") or 0),
            kwargs.get("username"),
            kwargs.get("password"),
            float(kwargs.get("socket_connect_timeout") or 2.0),
            float(kwargs.get("socket_timeout") or 5.0),
        )

    async def evalsha(self, sha: str, script: str, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA, loading the script first if the server does not know it (a restart)."""
        try:
            return await self.call("EVALSHA", sha, len(keys), *keys, *args)
        except NoScriptError:
            await self.call("SCRIPT", "LOAD", script)
            return await self.call("EVALSHA", sha, len(keys), *keys, *args)

    async def call(self, *args: Any) -> Any:
        packed = hiredis.pack_command(args)
        try:
            reply = await (await self._connected()).send(packed)
        except LaneClosed:
            reply = await (await self._connected()).send(packed)  # once more, on a fresh connection
        if isinstance(reply, hiredis.ReplyError):
            message = str(reply)
            raise NoScriptError(message) if message.startswith("NOSCRIPT") else ResponseError(message)
        return reply

    async def close(self) -> None:
        if self._watchdog is not None:
            await cancel_and_wait(self._watchdog)
        if self._connection is not None:
            self._connection.close("the store is closing")

    async def _connected(self) -> _Connection:
        connection = self._connection
        if connection is not None and not connection.closed:
            return connection
        async with self._connecting:
            if self._connection is None or self._connection.closed:
                self._connection = await self._connect()
                if self._watchdog is None or self._watchdog.done():
                    self._watchdog = asyncio.get_running_loop().create_task(self._watch())
            return self._connection

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, connection = await loop.create_connection(_Connection, self.host, self.port)
                for command in self._handshake():
                    reply = await connection.send(hiredis.pack_command(command))
                    if isinstance(reply, hiredis.ReplyError):
                        connection.close(str(reply))
                        raise LaneClosed(f"Redis refused {command[0]}: {reply}")
        except (OSError, TimeoutError) as exc:
            raise LaneClosed(f"cannot connect to Redis at {self.host}:{self.port}: {exc}") from exc
        return connection

    def _handshake(self) -> list[tuple[Any, ...]]:
        commands: list[tuple[Any, ...]] = []
        if self.password:
            commands.append(("AUTH", self.username, self.password) if self.username else ("AUTH", self.password))
        if self.db:
            commands.append(("SELECT", self.db))
        commands.append(("CLIENT", "SETNAME", LANE_CLIENT_NAME))  # so that CLIENT LIST shows what it is
        return commands

    async def _watch(self) -> None:
        """Close a connection whose oldest command has waited longer than the reply timeout."""
        while True:
            await asyncio.sleep(min(1.0, self.reply_timeout / 2))
            connection = self._connection
            if (
                connection is not None
                and connection.waiting
                and time.monotonic() - connection.waiting[0][1] > self.reply_timeout
            ):
                connection.close(f"Redis did not answer within {self.reply_timeout:g}s")
