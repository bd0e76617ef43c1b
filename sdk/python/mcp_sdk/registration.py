"""A plugin that registers itself with an orchestrator and keeps renewing its registration."""

from __future__ import annotations

import asyncio
import logging

from mcp_sdk.client import Client
from mcp_sdk.connection import Tls
from mcp_sdk.errors import McpError

log = logging.getLogger(__name__)


async def keep_registered(
    orchestrator: str, address: str, ttl: float, token: str | None, tls: Tls | bool | None
) -> None:
    """Register `address` with `orchestrator` for `ttl` seconds, and again every third of it, for
    ever (run as a task; a failed registration is logged and tried again at the next turn)."""
    async with Client(orchestrator, token=token, tls=tls, timeout=5) as client:
        while True:
            try:
                await client.register_protocols(address, ttl=int(ttl))
            except McpError as exc:
                log.warning("could not register with %s: %s", orchestrator, exc)
            await asyncio.sleep(max(1.0, ttl / 3))
