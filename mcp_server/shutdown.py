"""Being told to stop, for the long-running commands (server, console)."""

from __future__ import annotations

import asyncio
import signal


def stop_requested() -> asyncio.Event:
    """An event set when the process receives SIGTERM or SIGINT, from now on. Call it before
    announcing that the process serves: a signal sent as soon as the announcement is read must
    find the handler in place (else it ends the process at once, without a clean stop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop
