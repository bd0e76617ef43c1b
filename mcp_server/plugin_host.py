"""Start plugin processes and learn their addresses (used for the bundled plugins and in tests).

Each plugin prints `MCP_PLUGIN_LISTENING host:port` once it serves; we wait for that line.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from dataclasses import dataclass

from mcp_server.errors import StartupError

READY_LINE = "MCP_PLUGIN_LISTENING"
# The real protocols only: the testkit and chaos plugins are test doubles, started by the tests.
BUNDLED = ("protocol_plugins.basics", "protocol_plugins.cognitive", "protocol_plugins.writing")
LLM = "protocol_plugins.llm"


def bundled_modules() -> tuple[str, ...]:
    """The bundled plugins to start: the llm plugin too when a model server is set (MCP_LLM_BASE_URL)."""
    return (*BUNDLED, LLM) if os.environ.get("MCP_LLM_BASE_URL") else BUNDLED


@dataclass
class PluginProcess:
    module: str
    process: asyncio.subprocess.Process
    address: str
    drain: asyncio.Future[None] | None = None  # keeps reading stdout so the pipe never fills

    async def stop(self, grace: float = 3.0) -> None:
        if self.process.returncode is None:
            self.process.terminate()
            try:
                async with asyncio.timeout(grace):
                    await self.process.wait()
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


async def start_plugin(module: str, listen: str = "127.0.0.1:0", timeout: float = 20.0) -> PluginProcess:
    """Run `python -m protocol_plugins.run MODULE` and wait until it serves."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "protocol_plugins.run",
        module,
        "--listen",
        listen,
        "--exit-with-parent",  # a server killed -9 leaves none of its plugins running
        stdout=asyncio.subprocess.PIPE,
        stderr=None,
    )
    assert process.stdout is not None
    try:
        async with asyncio.timeout(timeout):
            while line := (await process.stdout.readline()).decode():
                if line.startswith(READY_LINE):
                    address = line.split()[1]
                    return PluginProcess(module, process, address, asyncio.ensure_future(_drain(process.stdout)))
    except TimeoutError:
        pass
    with contextlib.suppress(ProcessLookupError):
        process.kill()
    await process.wait()
    raise StartupError(f"plugin {module} did not start (exit code {process.returncode})")


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass
