"""Watchers that start while their task is being written, on the replica that runs it: every
event reaches them once, in order, with no stall. (Such a watcher is fed by the replica's own
writes, not by XREAD; a write that lands between its first read and its subscription must
not be lost.)"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from mcp_sdk.proto import task_pb2
from mcp_server.state.redis.streams import StreamHub
from tests.conftest import client_for
from tests.helpers import create, step, workflow

pytestmark = pytest.mark.asyncio
E = task_pb2.TaskEventType


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
    from mcp_server.engine.events import make_event
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


@pytest.mark.parametrize("read", ["SubmitTask + WatchTask", "SubmitAndWatchTask"])
async def test_a_watcher_here_follows_a_task_that_parked_here_and_resumed_on_another_replica(
    server_factory, redis_url, monkeypatch, read
):
    """A replica stops counting itself the writer of a task's log once its run parks: the task
    may resume anywhere, and what the other replica writes must reach the watchers here through
    the XREAD (it reached them only when the writer mark ran out, 5 s by default; 600 here).
    SubmitAndWatchTask follows the log from the create on, with no read: the same holds."""
    monkeypatch.setattr(StreamHub, "LOCAL_SECONDS", 600.0)
    here = await server_factory(store=redis_url)
    there = await server_factory(store=redis_url)
    near, far = client_for(here), client_for(there)
    steps = [{"id": "approval", "wait": {"signal": "go"}}, step("after", "echo")]
    await create(near, workflow("approve-then-echo", {"id": "root", "sequence": {"children": steps}}))
    submit = task_pb2.SubmitTaskRequest(workflow_id="approve-then-echo")
    seen: list[task_pb2.TaskEvent] = []
    if read == "SubmitAndWatchTask":
        stream = near.tasks.SubmitAndWatchTask(submit)
        first = await stream.read()
        task = first.submitted.task
        seen += first.events

        async def watch_here() -> None:
            while (reply := await stream.read()) is not grpc.aio.EOF:
                seen.extend(reply.events)

    else:
        task = (await near.tasks.SubmitTask(submit)).task

        async def watch_here() -> None:
            async for event in near.tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=task.task_id)):
                seen.append(event)

    watcher = asyncio.get_running_loop().create_task(watch_here())
    async with asyncio.timeout(10):
        while (await near.tasks.GetTask(task_pb2.GetTaskRequest(task_id=task.task_id))).task.status != (
            task_pb2.TASK_STATUS_WAITING
        ):
            await asyncio.sleep(0.02)
    request = task_pb2.SignalTaskRequest(task_id=task.task_id, signal="go")
    assert (await far.tasks.SignalTask(request)).step_path == "root/approval"
    await asyncio.wait_for(watcher, 10)
    runs = [e.message for e in seen if e.type in (E.TASK_EVENT_TYPE_STARTED, E.TASK_EVENT_TYPE_RESUMED)]
    assert here.orchestrator.settings.replica_id in runs[0] and there.orchestrator.settings.replica_id in runs[-1], runs
    assert [e.sequence for e in seen] == list(range(1, len(seen) + 1)) and seen[-1].type == E.TASK_EVENT_TYPE_COMPLETED
    await near.channel.close()
    await far.channel.close()


async def test_watching_finished_tasks_leaves_no_followed_log_behind(server_factory, store_url, monkeypatch):
    """A watcher whose first read holds the task's end never waits on its log: that log must
    still be forgotten once idle (it was kept, with its events, for as long as the process ran)."""
    from mcp_server.state.followers import Followers

    monkeypatch.setattr(Followers, "PRUNE_EVERY_SECONDS", 0.0)
    running = await server_factory(store=store_url)
    client = client_for(running)
    await create(client, workflow("one", {"id": "root", "sequence": {"children": [step("s", "echo")]}}))
    finished = [
        (await client.tasks.RunTask(task_pb2.SubmitTaskRequest(workflow_id="one"))).task.task_id for _ in range(10)
    ]
    tasks: Any = running.orchestrator.store.tasks
    followers = tasks.hub.followers if hasattr(tasks, "hub") else tasks.db.followers
    for task_id in finished:
        seen = [e async for e in client.tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=task_id))]
        assert seen[-1].type == E.TASK_EVENT_TYPE_COMPLETED
    assert len(followers.logs) >= len(finished)
    followers.idle_seconds = 0.05
    await asyncio.sleep(0.1)
    followers.prune()
    assert not followers.logs
    await client.channel.close()


async def test_a_replica_that_takes_a_task_back_still_reads_what_another_wrote_meanwhile(redis_url, monkeypatch):
    """This replica wrote events 1-4 (its run), another wrote 5-6 (the task resumed there), and
    this one took it back and wrote 7 before its XREAD had read 5-6. Being the writer again must
    not keep the stream off the XREAD while 5-6 are missing: the watcher here gets 5, 6, 7 (it
    waited until the writer mark ran out, 5 s by default; 600 here)."""
    import uuid

    from mcp_server.engine.events import make_event
    from mcp_server.state import open_store

    monkeypatch.setattr(StreamHub, "LOCAL_SECONDS", 600.0)
    store = await open_store(redis_url)
    hub = store.tasks.hub  # type: ignore[attr-defined]
    key, partition = f"stream-under-test:{uuid.uuid4().hex}", 0
    events = [make_event("t", n, task_pb2.TASK_EVENT_TYPE_PROGRESS) for n in range(1, 8)]
    try:
        hub.written(key, events[:4])  # this replica's run: the stream is its own
        await hub.follow(key, partition, 0)
        hub.feed(key, events[:4])  # a watcher's first read
        for event in events[4:6]:  # what the other replica wrote
            await store.tasks.conn.do(  # type: ignore[attr-defined]
                store.tasks.conn.r.xadd(key, {"e": event.SerializeToString()}, id=f"0-{event.sequence}")  # type: ignore[attr-defined]
            )
        hub.written(key, events[6:7])  # this replica runs it again: 7, ahead of 5-6
        assert [e.sequence for e in await hub.wait(key, partition, 4, 5.0)] == [5, 6, 7]
    finally:
        await store.tasks.conn.do(store.tasks.conn.r.delete(key))  # type: ignore[attr-defined]
        await store.close()


async def test_a_gap_before_a_first_read_waits_for_that_read_and_one_it_leaves_goes_to_the_xread(
    redis_url, monkeypatch
):
    """A watcher that comes right after its task is submitted here follows, then reads the
    stream, while the run writes on: events written meanwhile arrive ahead of a gap the read
    fills, so no XREAD is woken for it (before, each such watcher cost a wake-up write and an
    XREAD of the stream). A gap the read leaves (another replica wrote 5-6) still goes to the
    XREAD at once."""
    import uuid

    from mcp_server.engine.events import make_event
    from mcp_server.state import open_store

    monkeypatch.setattr(StreamHub, "LOCAL_SECONDS", 600.0)  # only a wake-up brings the XREAD to a local stream
    woken: list[str] = []
    wake = StreamHub._wake_readers_of
    monkeypatch.setattr(StreamHub, "_wake_readers_of", lambda hub, key: (woken.append(key), wake(hub, key)))
    store = await open_store(redis_url)
    hub = store.tasks.hub  # type: ignore[attr-defined]
    events = [make_event("t", n, task_pb2.TASK_EVENT_TYPE_PROGRESS) for n in range(1, 8)]
    quiet, missing = f"stream-under-test:{uuid.uuid4().hex}", f"stream-under-test:{uuid.uuid4().hex}"
    try:
        hub.written(quiet, events[:1])  # this replica runs the task: the stream is its own
        await hub.follow(quiet, 0, 0, reading=True)
        hub.written(quiet, events[4:6])  # the run writes 5-6 while the read is under way
        assert woken == []
        hub.feed(quiet, events[:4])  # the read brings 1-4
        assert [e.sequence for e in await hub.wait(quiet, 0, 0, 1.0)] == [1, 2, 3, 4, 5, 6] and woken == []

        hub.written(missing, events[:1])
        await hub.follow(missing, 0, 0, reading=True)
        for event in events[4:6]:  # another replica writes 5-6 after the read began
            await store.tasks.conn.do(  # type: ignore[attr-defined]
                store.tasks.conn.r.xadd(missing, {"e": event.SerializeToString()}, id=f"0-{event.sequence}")  # type: ignore[attr-defined]
            )
        hub.written(missing, events[6:7])  # this replica runs it again: 7
        hub.feed(missing, events[:4])  # the read saw 1-4 only: 5-6 are for the XREAD
        assert woken == [missing]
        assert [e.sequence for e in await hub.wait(missing, 0, 4, 5.0)] == [5, 6, 7]
    finally:
        await store.tasks.conn.do(store.tasks.conn.r.delete(quiet, missing))  # type: ignore[attr-defined]
        await store.close()
