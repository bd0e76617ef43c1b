"""TaskStore.delete_finished on every backend (SQLite, one Redis node, a Redis Cluster): a finished
task goes at once with everything it holds, one not finished keeps everything, reruns keep the
values they share with it, and nothing held in memory of it outlives it."""

from __future__ import annotations

import asyncio

import pytest

from mcp_sdk.proto import task_pb2
from mcp_server.engine.events import make_event
from mcp_server.engine.ports import CachedOutput, Deletion, StepRecord, TaskFilter
from mcp_server.errors import NotFound
from mcp_server.state import open_store
from mcp_server.state.common import request_task_id
from tests.contract.conftest import E, checkpoint, claim_and_complete, ids, new_task
from tests.contract.test_reruns_contract import create_rerun, finished_source

pytestmark = pytest.mark.asyncio


async def test_a_finished_task_goes_with_everything_it_holds_and_only_it(store):
    gone = await finished_source(store, {"d1": b"one"})
    kept = await finished_source(store, {"d1": b"one"})
    pending, event = new_task()
    await store.queue.create_task(pending, event)

    assert await store.tasks.delete_finished(gone.task_id) is Deletion.DELETED

    assert await store.tasks.get_task(gone.task_id) is None
    assert await store.tasks.read_events(gone.task_id, 0) == []
    assert await store.tasks.read_steps(gone.task_id, 0, 10) == []
    assert await store.tasks.read_values(gone.task_id, ["d1"]) == {}
    for where in (
        TaskFilter(),
        TaskFilter(statuses=(task_pb2.TASK_STATUS_COMPLETED,)),
        TaskFilter(workflow_id="wf"),
        TaskFilter(owner=""),
    ):
        assert gone.task_id not in ids(await store.tasks.list_tasks(10, "", where))
    page = await store.tasks.list_tasks(10, "", TaskFilter())
    assert ids(page) == [pending.task_id, kept.task_id] and page.total == 2
    assert await store.tasks.read_values(kept.task_id, ["d1"]) == {"d1": b"one"}
    assert await store.tasks.delete_finished(gone.task_id) is Deletion.MISSING
    assert await store.tasks.purge_finished() == 0  # its retention entry went with it


async def test_a_task_not_finished_keeps_everything(store):
    task, event = new_task()
    await store.queue.create_task(task, event)
    assert await store.tasks.delete_finished(task.task_id) is Deletion.NOT_FINISHED  # pending
    claimed, token = await store.queue.claim_task("me", 30)
    running = [make_event(task.task_id, 2, E.TASK_EVENT_TYPE_STARTED)]
    steps = [StepRecord(0, "root", b"root")]
    await store.tasks.save_checkpoint(
        checkpoint(claimed, token, task_pb2.TASK_STATUS_RUNNING, running, steps, {"d1": b"one"})
    )
    assert await store.tasks.delete_finished(task.task_id) is Deletion.NOT_FINISHED  # running

    stored = await store.tasks.get_task(task.task_id)
    assert stored.status == task_pb2.TASK_STATUS_RUNNING
    assert [e.sequence for e in await store.tasks.read_events(task.task_id, 0)] == [1, 2]
    assert await store.tasks.read_values(task.task_id, ["d1"]) == {"d1": b"one"}
    ended = [make_event(task.task_id, 3, E.TASK_EVENT_TYPE_COMPLETED)]
    await store.tasks.save_checkpoint(checkpoint(claimed, token, task_pb2.TASK_STATUS_COMPLETED, ended, steps))
    assert await store.tasks.delete_finished(task.task_id) is Deletion.DELETED
    assert await store.tasks.delete_finished("never-made") is Deletion.MISSING


async def test_reruns_keep_the_values_they_share_and_forget_a_deleted_rerun(store):
    source = await finished_source(store, {"d1": b"one", "d2": b"two"})
    first, _, _ = await create_rerun(store, source.task_id, ["d1"])
    second, _, _ = await create_rerun(store, source.task_id, ["d2"])
    events = [make_event(second.task_id, 2, E.TASK_EVENT_TYPE_COMPLETED)]
    await store.tasks.save_checkpoint(checkpoint(second, 1, task_pb2.TASK_STATUS_COMPLETED, events))

    assert await store.tasks.delete_finished(second.task_id) is Deletion.DELETED
    assert await store.tasks.reruns_of(source.task_id, 10) == [first.task_id]
    assert await store.tasks.delete_finished(source.task_id) is Deletion.DELETED
    assert await store.tasks.read_values(first.task_id, ["d1", "d2"]) == {"d1": b"one"}
    assert (await store.tasks.get_task(first.task_id)).rerun_of == source.task_id


async def test_the_request_id_of_a_deleted_task_makes_a_new_task(store):
    task, event = new_task(request_id="r1", owner="ann")
    task.task_id = event.task_id = request_task_id("ann", "r1")
    _, created, _ = await store.queue.create_leased(task, event, "", 30, fingerprint="f")
    assert created
    await claim_and_complete(store, task, 30)
    assert await store.tasks.delete_finished(task.task_id) is Deletion.DELETED

    again, event = new_task(request_id="r1", owner="ann")
    again.task_id = event.task_id = task.task_id
    stored, created, _ = await store.queue.create_leased(again, event, "", 30, fingerprint="another")
    assert created and stored.task_id == task.task_id
    read = await store.tasks.get_task(task.task_id)
    assert read.status == task_pb2.TASK_STATUS_PENDING and read.last_sequence == 1


async def test_a_watcher_of_a_deleted_task_is_told_and_its_successor_s_events_are_its_own(any_store_url):
    """A log followed in memory must not outlive its task: a watcher waiting on it hears NOT_FOUND,
    and a task made again with the same id (same request_id) is never shown the old one's events,
    on the replica that made it nor on another that held the old log (Redis: a second store)."""
    store = await open_store(any_store_url)
    other = await open_store(any_store_url) if any_store_url.startswith("redis") else store
    try:
        task, event = new_task(request_id="r2")
        task.task_id = event.task_id = request_task_id("", "r2")
        await store.queue.create_task(task, event)
        await claim_and_complete(store, task, 30)
        for replica in {id(store): store, id(other): other}.values():
            assert [e.sequence for e in await replica.tasks.wait_events(task.task_id, 0, timeout=0)] == [1, 2]
        waiting = asyncio.create_task(store.tasks.wait_events(task.task_id, 2, timeout=10))
        await asyncio.sleep(0.1)

        assert await store.tasks.delete_finished(task.task_id) is Deletion.DELETED
        with pytest.raises(NotFound):
            await asyncio.wait_for(waiting, 5)

        again, event = new_task(request_id="r2")
        again.task_id = event.task_id = task.task_id
        await store.queue.create_task(again, event)
        for replica in {id(store): store, id(other): other}.values():
            # what a watch does first (Watching.open_watch): drop a log older than the task
            replica.tasks.forget_log_before(again.task_id, again.create_time.ToNanoseconds())
            seen = await replica.tasks.wait_events(again.task_id, 0, timeout=2)
            assert [(e.sequence, e.type) for e in seen] == [(1, E.TASK_EVENT_TYPE_QUEUED)]
            assert seen[0].time.ToNanoseconds() >= again.create_time.ToNanoseconds()
    finally:
        await store.close()
        if other is not store:
            await other.close()


async def test_a_task_s_cached_outputs_go_and_those_another_task_stored_since_stay(store):
    cache = store.step_cache
    await cache.put_output("k1", CachedOutput("task-a", b"one"), 60)
    await cache.put_output("k2", CachedOutput("task-a", b"two"), 60)
    await cache.put_output("k2", CachedOutput("task-b", b"two, again"), 60)  # stored since by another task
    await cache.put_output("k3", CachedOutput("task-b", b"three"), 60)

    assert await cache.remove_outputs_of("task-a") == 1
    assert await cache.get_output("k1") is None
    assert (await cache.get_output("k2")).output == b"two, again"
    assert (await cache.get_output("k3")).task_id == "task-b"
    assert await cache.remove_outputs_of("task-a") == 0
    assert await cache.remove_outputs_of("task-b") == 2
    assert await cache.get_output("k2") is None and await cache.get_output("k3") is None
