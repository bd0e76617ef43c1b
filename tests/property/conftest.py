"""The property tests run on both stores: a client of a server on SQLite, then on Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from mcp_server.api.server import RunningServer
from tests.conftest import client_for


@pytest.fixture
async def client(server_factory: Callable[..., Awaitable[RunningServer]], store_url: str) -> AsyncIterator[Any]:
    running = await server_factory(store=store_url)
    client = client_for(running)
    yield client
    await client.channel.close()
