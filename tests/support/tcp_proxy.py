"""A TCP proxy on loopback that can cut every connection through it on demand: a dropped network
between a client and the server, with real sockets, while the server itself stays up."""

from __future__ import annotations

import asyncio
import contextlib


class TcpProxy:
    """Forwards 127.0.0.1:<port> to `target`; `drop()` closes every open connection and
    `freeze()` stops forwarding on them without closing anything (a network path that silently
    died); new connections are served as before either way, unless `cut()` refuses them too
    until `mend()` (the target gone for this client alone), or `blackhole()` freezes them too
    (the path silently dead for this client alone: nothing refused, nothing answered); with
    `reply_delay` set, what the target sends reaches the client that many seconds late (a slow
    path, or a slow store), in order."""

    def __init__(self, target: str) -> None:
        self.target_host, port = target.rsplit(":", 1)
        self.target_port = int(port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._frozen: set[asyncio.StreamWriter] = set()
        self._cut = False
        self._blackholed = False
        self.connections = 0
        self.reply_delay = 0.0

    @property
    def address(self) -> str:
        assert self._server is not None
        return f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def stop(self) -> None:
        self.drop()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def drop(self) -> int:
        """Cut every connection now; returns how many sockets were closed."""
        writers, self._writers = self._writers, set()
        for writer in writers:
            transport = writer.transport
            if hasattr(transport, "abort"):
                transport.abort()  # a reset, not a polite close
            else:
                writer.close()
        return len(writers)

    def cut(self) -> int:
        """Close every connection and refuse new ones until `mend()`; returns how many were closed."""
        self._cut = True
        return self.drop()

    def mend(self) -> None:
        """Serve new connections again (those frozen stay so, as a dead path's would, until their
        client gives up on them)."""
        self._cut = self._blackholed = False

    def blackhole(self) -> int:
        """Freeze every open connection and every new one until `mend()`; returns how many were open."""
        self._blackholed = True
        return self.freeze()

    def freeze(self) -> int:
        """Stop forwarding on every open connection, leaving the sockets open; returns how many."""
        self._frozen |= self._writers
        self._writers = set()
        return len(self._frozen)

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self._cut:
            client_writer.transport.abort()
            return
        if self._blackholed:  # taken, then nothing: what the client sends is swallowed
            self._frozen.add(client_writer)
            with contextlib.suppress(ConnectionError, OSError):
                while await client_reader.read(65536):
                    pass
            self._frozen.discard(client_writer)
            client_writer.close()
            return
        try:
            server_reader, server_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            client_writer.close()
            return
        self._writers |= {client_writer, server_writer}
        await asyncio.gather(
            self._pipe(client_reader, server_writer), self._pipe(server_reader, client_writer, delayed=True)
        )

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delayed: bool = False) -> None:
        loop = asyncio.get_running_loop()
        late: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        sender = asyncio.create_task(self._send_late(late, writer)) if delayed else None
        try:
            while data := await reader.read(65536):
                if writer in self._frozen:
                    continue  # swallowed: nothing arrives, nothing is closed
                if sender is not None:  # always in line: a delay set or cleared meanwhile keeps the order
                    late.put_nowait((loop.time() + self.reply_delay, data))
                    continue
                writer.write(data)
                await writer.drain()
            if sender is not None:  # the end: what is in line goes out first
                late.put_nowait(None)
                await sender
        except (ConnectionError, OSError):
            pass
        finally:
            if sender is not None:
                sender.cancel()
            self._writers.discard(writer)
            self._frozen.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    async def _send_late(self, late: asyncio.Queue[tuple[float, bytes] | None], writer: asyncio.StreamWriter) -> None:
        """Send each chunk at its time, in the order it came, until the end (None)."""
        loop = asyncio.get_running_loop()
        with contextlib.suppress(ConnectionError, OSError):
            while (chunk := await late.get()) is not None:
                due, data = chunk
                await asyncio.sleep(max(0.0, due - loop.time()))
                if writer not in self._frozen:
                    writer.write(data)
                    await writer.drain()
