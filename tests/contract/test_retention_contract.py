"""Retention judged at each purge, the same on every backend: a lower MCP_RETENTION_SECONDS purges
tasks that ended under a longer one; on Redis a longer one lengthens the TTLs their keys carry
(the backstop for when no replica purges), and tasks that ended before finished tasks were listed
by end time are still purged when their purge time comes."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from mcp_server.state import open_store
from mcp_server.state.redis.connection import BACKSTOP_MS
from tests.contract.conftest import claim_and_complete, new_task

pytestmark = pytest.mark.asyncio


def reopenable(any_store_url: str, tmp_path: Any) -> str:
    """The same store opened again (the embedded one in a file, not in memory)."""
    return f"sqlite:///{tmp_path}/retention.db" if any_store_url.startswith("sqlite") else any_store_url


async def finished_task(url: str, retention_seconds: float) -> str:
    store = await open_store(url, retention_seconds=retention_seconds)
    try:
        task, event = new_task()
        await store.queue.create_task(task, event)
        await claim_and_complete(store, task, 30)
        await store.tasks.purge_finished()  # its first purge: the store is kept with this retention now
        keeper = getattr(store.tasks, "retention", None)  # Redis records it in the background
        async with asyncio.timeout(10):
            while keeper is not None and keeper.agreeing:
                await asyncio.sleep(0.01)
        assert await store.tasks.get_task(task.task_id) is not None
        return task.task_id
    finally:
        await store.close()


async def test_a_lower_retention_purges_tasks_that_ended_under_a_longer_one(any_store_url, tmp_path):
    url = reopenable(any_store_url, tmp_path)
    ended = await finished_task(url, retention_seconds=3600)
    store = await open_store(url, retention_seconds=0.3)
    try:
        await asyncio.sleep(0.5)
        assert await store.tasks.purge_finished() >= 1
        assert await store.tasks.get_task(ended) is None
        assert await store.tasks.read_events(ended, 0) == []
    finally:
        await store.close()


@pytest.fixture(params=["redis", "cluster"])
def redis_store_url(request):
    return request.getfixturevalue("redis_url" if request.param == "redis" else "cluster_url")


async def ttls(store: Any, task_id: str) -> list[float]:
    """The seconds left on the task's header and its event log."""
    keys = store.tasks.layout.task(task_id)
    return [await store.tasks.conn.r.pttl(key) / 1000 for key in (keys.header, keys.events)]


async def test_a_longer_retention_lengthens_the_ttls_of_tasks_that_ended_before(redis_store_url):
    ended = await finished_task(redis_store_url, retention_seconds=10)
    store = await open_store(redis_store_url, retention_seconds=7200)
    try:
        backstop = BACKSTOP_MS / 1000
        assert all(10 + backstop - 5 < left <= 10 + backstop for left in await ttls(store, ended))
        await store.tasks.purge_finished()  # its first: it lengthens them, in the background
        async with asyncio.timeout(10):
            while not all(7200 + backstop - 5 < left <= 7200 + backstop for left in await ttls(store, ended)):
                await asyncio.sleep(0.05)
        assert await store.tasks.get_task(ended) is not None
    finally:
        await store.close()
    store = await open_store(redis_store_url, retention_seconds=60)  # lower again: TTLs stay (the purge judges)
    try:
        await store.tasks.purge_finished()
        assert all(left > 7000 for left in await ttls(store, ended))
    finally:
        await store.close()


async def test_tasks_that_ended_before_ends_were_listed_are_purged_when_their_time_comes(redis_store_url):
    """A task that ended under the layout before (its purge time in the retention zset, not its end
    in `ends`) goes when that time comes, and not before."""
    due, later = await finished_task(redis_store_url, 3600), await finished_task(redis_store_url, 3600)
    store = await open_store(redis_store_url, retention_seconds=3600)
    try:
        layout, client = store.tasks.layout, store.tasks.conn.r
        now_ms = int(time.time() * 1000)
        for task_id, purge_at in ((due, now_ms - 1000), (later, now_ms + 3_600_000)):
            partition = layout.partition_of(task_id)
            await client.zrem(layout.ends(partition), task_id)
            await client.zadd(layout.expiry(partition), {task_id: purge_at})
        assert await store.tasks.purge_finished() == 1
        assert await store.tasks.get_task(due) is None and await store.tasks.get_task(later) is not None
        await store.tasks.delete_finished(later)  # a delete takes it out of either set
        assert await client.zscore(layout.expiry(layout.partition_of(later)), later) is None
    finally:
        await store.close()
