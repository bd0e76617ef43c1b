"""Cancel requests read back the same on every store, whether a replica asks about a few tasks
(a nudge asks about one: on Redis, one round trip) or about every task it runs (more tasks than
partitions: each partition's pending requests first)."""

from __future__ import annotations

import pytest

from mcp_sdk.proto import task_pb2
from mcp_server.engine.event_types import E
from mcp_server.engine.events import make_event
from mcp_server.errors import CancelRequested
from mcp_server.state import open_store
from tests.contract.conftest import checkpoint, claim_and_complete, new_task

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


async def test_a_request_for_an_ended_task_is_not_left_and_a_run_with_one_cannot_complete(any_store_url):
    """request_cancel says whether it left a request (not for a task that ended: nothing would
    ever take it away again); a run's write that would complete its task after a request was
    left is refused whole (CancelRequested, with the reason), and the same run may end it
    CANCELLED; a write that fails or parks it is not refused."""
    store = await open_store(any_store_url)
    try:
        ended, event = new_task()
        await store.queue.create_leased(ended, event, "", 30, fingerprint="")
        await claim_and_complete(store, ended, 30)
        assert await store.queue.request_cancel(ended.task_id, "too late") is False
        assert await store.queue.cancel_requests([ended.task_id]) == {}
        assert await store.queue.request_cancel("no-such-task", "nothing") is False

        running, event = new_task()
        await store.queue.create_leased(running, event, "", 30, fingerprint="")
        claimed, token = await store.queue.claim_task("me", 30)
        assert claimed.task_id == running.task_id
        assert await store.queue.request_cancel(running.task_id, "called off") is True
        completed = make_event(running.task_id, 2, E.TASK_EVENT_TYPE_COMPLETED)
        with pytest.raises(CancelRequested) as refused:
            await store.tasks.save_checkpoint(checkpoint(claimed, token, task_pb2.TASK_STATUS_COMPLETED, [completed]))
        assert refused.value.message == "called off"
        after = await store.tasks.get_task(running.task_id)
        assert after.status == claimed.status and after.last_sequence == 1  # nothing written
        assert [e.sequence for e in await store.tasks.read_events(running.task_id, 0)] == [1]

        cancelled = make_event(running.task_id, 2, E.TASK_EVENT_TYPE_CANCELLED)
        await store.tasks.save_checkpoint(checkpoint(claimed, token, task_pb2.TASK_STATUS_CANCELLED, [cancelled]))
        assert (await store.tasks.get_task(running.task_id)).status == task_pb2.TASK_STATUS_CANCELLED
        assert await store.queue.cancel_requests([running.task_id]) in ({}, {running.task_id: "called off"})
    finally:
        await store.close()


async def test_a_failed_end_is_not_refused_by_a_cancel_request(any_store_url):
    store = await open_store(any_store_url)
    try:
        task, event = new_task()
        await store.queue.create_leased(task, event, "", 30, fingerprint="")
        claimed, token = await store.queue.claim_task("me", 30)
        assert await store.queue.request_cancel(task.task_id, "called off") is True
        failed = make_event(task.task_id, 2, E.TASK_EVENT_TYPE_FAILED)
        await store.tasks.save_checkpoint(checkpoint(claimed, token, task_pb2.TASK_STATUS_FAILED, [failed]))
        assert (await store.tasks.get_task(task.task_id)).status == task_pb2.TASK_STATUS_FAILED
    finally:
        await store.close()
