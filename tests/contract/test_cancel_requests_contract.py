"""Cancel requests read back the same on every store, whether a replica asks about a few tasks
(a nudge asks about one: on Redis, one round trip) or about every task it runs (more tasks than
partitions: each partition's pending requests first)."""

from __future__ import annotations

import pytest

from mcp_server.state import open_store
from tests.contract.conftest import new_task

pytestmark = pytest.mark.asyncio


async def test_the_requests_among_a_few_tasks_and_among_many_are_the_same(any_store_url):
    store = await open_store(any_store_url)
    try:
        ids = []
        for _ in range(40):  # more than the 16 partitions
            task, event = new_task()
            await store.queue.create_leased(task, event, "", 30, fingerprint="")
            ids.append(task.task_id)
        asked = {ids[i]: f"reason {i}" for i in (0, 7, 19, 33, 39)}
        for task_id, reason in asked.items():
            await store.queue.request_cancel(task_id, reason)

        assert await store.queue.cancel_requests(ids) == asked
        assert await store.queue.cancel_requests([ids[7]]) == {ids[7]: "reason 7"}
        assert await store.queue.cancel_requests([ids[1], ids[33], "no-such-task"]) == {ids[33]: "reason 33"}
        assert await store.queue.cancel_requests([ids[2]]) == {}
        assert await store.queue.cancel_requests([]) == {}
    finally:
        await store.close()
