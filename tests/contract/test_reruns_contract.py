"""Reruns in the stores (TaskQueue.create_leased with `kept`): every backend stores a rerun with
the step records it keeps in the same write, shares the large values they refer to with the task
that holds them, and gives each rerun its own copy when that task is purged first."""

from __future__ import annotations

import asyncio

import pytest

from mcp_sdk.proto import task_pb2
from mcp_server.engine.ports import Kept, StepRecord
from mcp_server.errors import NotFound
from mcp_server.state import open_store
from mcp_server.state.common import RequestIdReused
from tests.contract.conftest import E, checkpoint, new_task

pytestmark = pytest.mark.asyncio


async def finished_source(store, values: dict[str, bytes]) -> task_pb2.Task:
    """A completed task with two step records and `values`."""
    task, event = new_task()
    await store.queue.create_task(task, event)
    claimed, token = await store.queue.claim_task("me", 30)
    steps = [StepRecord(0, "root", b"root"), StepRecord(1, "root/a", b"a")]
    events = [event, task_pb2.TaskEvent(task_id=task.task_id, sequence=2, type=E.TASK_EVENT_TYPE_COMPLETED)]
    await store.tasks.save_checkpoint(checkpoint(claimed, token, task_pb2.TASK_STATUS_COMPLETED, events, steps, values))
    return task


async def create_rerun(store, source_id: str, digests: list[str], request_id: str = "", fingerprint: str = ""):
    task, event = new_task(request_id=request_id)
    task.rerun_of = source_id
    task.step_count = 1
    kept = Kept(source_id, [StepRecord(0, "root/a", b"a-reused")], digests)
    return await store.queue.create_leased(task, event, "holder", 30, fingerprint=fingerprint, kept=kept)


async def test_a_rerun_is_stored_with_what_it_keeps_and_listed_as_a_rerun(store):
    source = await finished_source(store, {"d1": b"one", "d2": b"two"})
    rerun, created, token = await create_rerun(store, source.task_id, ["d1"])
    assert created and token == 1
    stored = await store.tasks.get_task(rerun.task_id)
    assert stored.rerun_of == source.task_id and stored.step_count == 1
    assert await store.tasks.read_steps(rerun.task_id, 0, 10) == [StepRecord(0, "root/a", b"a-reused")]
    assert await store.tasks.read_values(rerun.task_id, ["d1", "d2"]) == {"d1": b"one"}  # only what it links
    assert await store.tasks.reruns_of(source.task_id, 10) == [rerun.task_id]
    second, _, _ = await create_rerun(store, source.task_id, [])
    assert await store.tasks.reruns_of(source.task_id, 10) == [rerun.task_id, second.task_id]


async def test_a_rerun_request_id_dedupes_apart_from_submissions(store):
    source = await finished_source(store, {})
    first, created, _ = await create_rerun(store, source.task_id, [], request_id="r", fingerprint="f")
    again, created_again, token = await create_rerun(store, source.task_id, [], request_id="r", fingerprint="f")
    assert created and not created_again and token == 0 and again.task_id == first.task_id
    with pytest.raises(RequestIdReused):
        await create_rerun(store, source.task_id, [], request_id="r", fingerprint="other")
    other = await finished_source(store, {})
    with pytest.raises(RequestIdReused):  # the same request_id for a rerun of another task
        await create_rerun(store, other.task_id, [], request_id="r", fingerprint="f2")
    submitted, event = new_task(request_id="r")
    _, created, _ = await store.queue.create_leased(submitted, event, "", 30, fingerprint="s")
    assert created and submitted.task_id != first.task_id


async def test_shared_values_outlive_the_task_that_held_them(any_store_url):
    store = await open_store(any_store_url, retention_seconds=0.3)
    try:
        source = await finished_source(store, {"d1": b"one", "d2": b"two"})
        first, _, _ = await create_rerun(store, source.task_id, ["d1", "d2"])
        second, _, _ = await create_rerun(store, first.task_id, ["d1"])  # linked to the source, through the first
        await asyncio.sleep(0.5)
        await store.tasks.purge_finished()
        assert await store.tasks.get_task(source.task_id) is None
        assert await store.tasks.read_values(first.task_id, ["d1", "d2"]) == {"d1": b"one", "d2": b"two"}
        assert await store.tasks.read_values(second.task_id, ["d1"]) == {"d1": b"one"}
        await claim_and_complete_leased(store, first)
        await asyncio.sleep(0.5)
        await store.tasks.purge_finished()
        assert await store.tasks.get_task(first.task_id) is None
        assert await store.tasks.read_values(second.task_id, ["d1"]) == {"d1": b"one"}
    finally:
        await store.close()


async def claim_and_complete_leased(store, task: task_pb2.Task) -> None:
    """Complete a task created leased to "holder" (token 1)."""
    events = [task_pb2.TaskEvent(task_id=task.task_id, sequence=2, type=E.TASK_EVENT_TYPE_COMPLETED)]
    await store.tasks.save_checkpoint(checkpoint(task, 1, task_pb2.TASK_STATUS_COMPLETED, events))


async def test_a_rerun_of_a_purged_task_is_not_found(any_store_url):
    store = await open_store(any_store_url, retention_seconds=0.1)
    try:
        source = await finished_source(store, {"d1": b"one"})
        await asyncio.sleep(0.3)
        await store.tasks.purge_finished()
        with pytest.raises(NotFound, match="purged"):
            await create_rerun(store, source.task_id, ["d1"])
    finally:
        await store.close()
