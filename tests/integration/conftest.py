"""What the integration tests share: a server on the test's store (each store in turn) and a
client of it. A module that needs other settings defines its own `served`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from mcp_server.api.server import RunningServer
from tests.conftest import client_for


@pytest.fixture
async def served(server_factory: Callable[..., Awaitable[RunningServer]], store_url: str) -> AsyncIterator[Any]:
    """(the running server, a client of it), on SQLite and on Redis, default settings."""
    running = await server_factory(store=store_url)
    client = client_for(running)
    yield running, client
    await client.channel.close()
