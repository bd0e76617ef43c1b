"""Waiting for the process to be told to stop, for the long-running commands (server, console)."""

from __future__ import annotations

import asyncio
import signal


async def stop_signal() -> None:
    """Return when the process receives SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
