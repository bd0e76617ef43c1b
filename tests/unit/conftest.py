"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from mcp_server.state import open_store
from tests.contract.conftest import new_task


@pytest.fixture
async def running() -> AsyncIterator[tuple[Any, Any, int]]:
    """An embedded store holding one task, claimed: (store, the task, its lease token)."""
    store = await open_store("sqlite://:memory:")
    task, event = new_task()
    await store.queue.create_task(task, event)
    claimed, token = await store.queue.claim_task("me", 30)
    yield store, claimed, token
    await store.close()
