"""Watchers that start while their task is being written, on the replica that runs it: every
event reaches them once, in order, with no stall. (Such a watcher is fed by the replica's own
writes, not by XREAD; a write that lands between its first read and its subscription must
not be lost.)"""

from __future__ import annotations

import asyncio

import pytest

from mcp_sdk.proto import task_pb2
from mcp_server.state.redis.streams import StreamHub
from tests.conftest import client_for
from tests.helpers import create, step, workflow

pytestmark = pytest.mark.asyncio


async def test_watchers_starting_mid_run_miss_nothing_and_never_stall(server_factory, redis_url, monkeypatch):
    # A stream written here stays off the XREAD for ten minutes: only a lost wakeup could stall.
    monkeypatch.setattr(StreamHub, "LOCAL_SECONDS", 600.0)
    running = await server_factory(store=redis_url)
    client = client_for(running)
    await create(
        client, workflow("three", {"id": "root", "sequence": {"children": [step(f"s{i}", "echo") for i in range(3)]}})
    )

    async def submit_and_watch(after: int) -> list[int]:
        task = (await client.tasks.SubmitTask(task_pb2.SubmitTaskRequest(workflow_id="three"))).task
        request = task_pb2.WatchTaskRequest(task_id=task.task_id, after_sequence=after)
        return [e.sequence async for e in client.tasks.WatchTask(request)]

    afters = [i % 11 for i in range(150)]
    seen = await asyncio.wait_for(asyncio.gather(*(submit_and_watch(a) for a in afters)), 60)
    for after, sequences in zip(afters, seen):
        assert sequences == list(range(after + 1, 12)), (after, sequences)
    await client.channel.close()


async def test_a_local_write_that_overtakes_the_first_read_is_kept_for_its_turn(redis_url):
    """The interleaving behind the stall, step by step: follow, then a local write of events
    5-6 arrives, then the first read brings 1-4. The hub must hand out 1-6, in order."""
    from mcp_server.engine.context import make_event
    from mcp_server.state import open_store

    store = await open_store(redis_url)
    hub = store.tasks.hub  # type: ignore[attr-defined]
    key, partition = "stream-under-test", 0
    events = [make_event("t", n, task_pb2.TASK_EVENT_TYPE_PROGRESS) for n in range(1, 8)]
    try:
        await hub.follow(key, partition, 0)
        hub.written(key, events[4:6])  # 5, 6: ahead of a gap
        hub.feed(key, events[:4])  # 1-4: the read that fills it
        assert [e.sequence for e in await hub.wait(key, partition, 0, 1.0)] == [1, 2, 3, 4, 5, 6]
        hub.written(key, events[5:7])  # 6 again (ignored) and 7
        assert [e.sequence for e in await hub.wait(key, partition, 6, 1.0)] == [7]
    finally:
        await store.close()
