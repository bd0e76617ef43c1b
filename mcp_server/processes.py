"""Several server processes on one address (`--processes N`, `MCP_PROCESSES`).

One Python process runs on one core. With N > 1 this process becomes a parent that serves
nothing itself: it starts N children, each a whole server and a replica on the same Redis store,
all listening on the same address (SO_REUSEPORT: the kernel spreads connections among them). A
child that dies is started again (after a pause that grows while it keeps dying); SIGTERM or
SIGINT drains every child (each stops as a lone server does) and then the parent ends. Each child
has its own replica id (`<replica-id>-<index>`), its own metrics port (`--metrics-port` + index)
and its own health; only the first serves the web console. If the parent is killed, the kernel
tells the children to stop (PR_SET_PDEATHSIG).

SQLite is refused: its store keeps counts and wake-ups in the process that opened it, so two
processes would not keep every guarantee.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass

from mcp_server.errors import StartupError
from mcp_server.settings import Settings
from mcp_server.shutdown import stop_requested
from mcp_server.state import describe_store

log = logging.getLogger(__name__)
SHARED_STORES = ("redis://", "rediss://", "unix://", "redis-cluster://")
READY = "mCP orchestrator listening on "
# a child that lived this long before it died is restarted at once; one that keeps dying sooner
# waits longer each time, up to MAX_RESTART_DELAY
STABLE_SECONDS = 30.0
MAX_RESTART_DELAY = 30.0


def refusal(settings: Settings) -> str | None:
    """Why `settings` cannot run as several processes, or None."""
    if settings.processes > 1 and not settings.store_url.startswith(SHARED_STORES):
        return (
            f"--processes {settings.processes} needs a Redis store (redis://, redis-cluster://): the SQLite store"
            " keeps its queue counts and wake-ups in the one process that opened it, so several processes would"
            " not keep every guarantee; run one process, or use Redis"
        )
    return None


@dataclass
class _Child:
    index: int
    generation: int = 0
    process: asyncio.subprocess.Process | None = None
    started: float = 0.0
    restarts_in_a_row: int = 0


class ProcessGroup:
    """The parent: starts, restarts and drains the children."""

    def __init__(self, settings: Settings, argv: list[str]) -> None:
        self.settings = settings
        self.argv = argv
        self.children = [_Child(index) for index in range(settings.processes)]
        self.listen = settings.listen
        self._reserved: socket.socket | None = None
        self._draining = False
        self._ready: dict[int, asyncio.Future[None]] = {}

    async def run(self) -> None:
        stop = stop_requested()
        self._reserve_port()
        try:
            watchers = [asyncio.create_task(self._keep(child)) for child in self.children]
            ready = asyncio.create_task(self._all_ready())
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait([ready, stopped], return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if ready.done():
                ready.result()  # a child that could not start raises here
                store = describe_store(self.settings.store_url)
                print(f"{READY}{self.listen} (store: {store}; {len(self.children)} processes)", flush=True)
                await stop.wait()
            else:
                ready.cancel()
            log.info("shutting down %d processes", len(self.children))
        finally:
            self._draining = True
            await self._drain()
            for watcher in watchers:
                watcher.cancel()
            if self._reserved is not None:
                self._reserved.close()

    async def _all_ready(self) -> None:
        await asyncio.gather(*(self._ready_future(child.index) for child in self.children))

    def _ready_future(self, index: int) -> asyncio.Future[None]:
        return self._ready.setdefault(index, asyncio.get_running_loop().create_future())

    def _reserve_port(self) -> None:
        """Settle port 0 on one free port for every child: a bound, not listening, socket
        holds it for the group's life (the kernel sends connections to listening ones only)."""
        host, _, port = self.listen.rpartition(":")
        if port != "0":
            return
        family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
        self._reserved = socket.socket(family, socket.SOCK_STREAM)
        self._reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        self._reserved.bind((host.strip("[]"), 0))
        self.listen = f"{host}:{self._reserved.getsockname()[1]}"

    def _command(self, child: _Child) -> list[str]:
        replica = f"{self.settings.replica_id}-{child.index}" + (f".{child.generation}" if child.generation else "")
        command = [sys.executable, "-m", "mcp_server", *self.argv]
        command += ["--processes", "1", "--listen", self.listen, "--replica-id", replica]
        if child.index > 0:
            command += ["--console-listen", ""]
        if self.settings.metrics_port:
            command += ["--metrics-port", str(self.settings.metrics_port + child.index)]
        return command

    async def _keep(self, child: _Child) -> None:
        """Run the child, and again whenever it dies, until the group drains."""
        while not self._draining:
            child.started = time.monotonic()
            child.process = await asyncio.create_subprocess_exec(
                *self._command(child),
                stdout=asyncio.subprocess.PIPE,
                env={**os.environ, "MCP_REUSE_PORT": "true", "MCP_PROCESSES": "1"},
                preexec_fn=_stop_with_parent,
            )
            code = await self._follow(child, child.process)
            ready = self._ready_future(child.index)
            if not ready.done():  # it never served: the group cannot start
                ready.set_exception(StartupError(f"process {child.index} ended with code {code} before it served"))
                return
            if self._draining:
                return
            lived = time.monotonic() - child.started
            child.restarts_in_a_row = 0 if lived >= STABLE_SECONDS else child.restarts_in_a_row + 1
            delay = min(MAX_RESTART_DELAY, 0.5 * (2**child.restarts_in_a_row - 1))
            log.warning(
                "process %d (pid %d) ended with code %s after %.0f s; starting it again in %.1f s",
                child.index,
                child.process.pid,
                code,
                lived,
                delay,
            )
            await asyncio.sleep(delay)
            child.generation += 1

    async def _follow(self, child: _Child, process: asyncio.subprocess.Process) -> int:
        """Pass the child's output on (its own ready line marks it ready instead) until it ends."""
        assert process.stdout is not None
        async for raw in process.stdout:
            line = raw.decode(errors="replace")
            if line.startswith(READY):
                ready = self._ready_future(child.index)
                if not ready.done():
                    ready.set_result(None)
                continue
            sys.stdout.write(line)
            sys.stdout.flush()
        return await process.wait()

    async def _drain(self) -> None:
        """SIGTERM to every child; SIGKILL to any still there after its own stop's time limits."""
        running = [c.process for c in self.children if c.process is not None and c.process.returncode is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(self.settings.shutdown_grace + 40):
                await asyncio.gather(*(process.wait() for process in running))
        except TimeoutError:
            for process in running:
                if process.returncode is None:
                    log.error("process %d did not stop in time: killing it", process.pid)
                    process.kill()


def _stop_with_parent() -> None:
    """In the child, before it runs: SIGTERM when the parent dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
