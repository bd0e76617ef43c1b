"""The TaskQueue contract: every backend (SQLite, one Redis node, a Redis Cluster) behaves the same."""

from __future__ import annotations

import asyncio

import pytest

from mcp_sdk.proto import task_pb2
from mcp_server.engine.ports import QueueGroup
from mcp_server.errors import LeaseLost
from mcp_server.state.common import RequestIdReused
from tests.contract.conftest import E, checkpoint, claim_and_complete, new_task

pytestmark = pytest.mark.asyncio


async def renew(store, leases: dict[str, int], seconds: float) -> list[str]:
    """Renew the leases; the ones lost (every other one must be said renewed, once)."""
    renewed, lost = [], []
    async for reply in store.queue.renew_leases(leases, seconds):
        renewed += reply.renewed
        lost += reply.lost
    assert sorted(renewed + lost) == sorted(leases)
    return lost


async def test_request_id_dedupes_task_creation(store):
    task, event = new_task(request_id="same")
    created, fresh = await store.queue.create_task(task, event)
    again_task, again_event = new_task(request_id="same")
    existing, fresh_again = await store.queue.create_task(again_task, again_event)
    assert fresh and not fresh_again and existing.task_id == created.task_id
    assert await store.queue.queue_length() == 1
    other_task, other_event = new_task(request_id="same", owner="someone-else")
    theirs, fresh_theirs = await store.queue.create_task(other_task, other_event)
    assert fresh_theirs and theirs.task_id != created.task_id
    changed, changed_event = new_task(request_id="same")
    with pytest.raises(RequestIdReused):
        await store.queue.create_task(changed, changed_event, fingerprint="another request")


async def test_a_task_is_found_by_the_request_that_made_it(store):
    plain, event = new_task(request_id="mine", owner="ada")
    made, _ = await store.queue.create_task(plain, event, fingerprint="fp-1")
    keyed, keyed_event = new_task(request_id="placed", owner="ada")  # placed by its group on Redis
    placed, _ = await store.queue.create_task(
        keyed, keyed_event, fingerprint="fp-2", group=QueueGroup.of_key("wf", "k", 1)
    )
    found = await store.queue.task_of_request("ada", "mine")
    assert (found.task.task_id, found.fingerprint, found.task.request_id) == (made.task_id, "fp-1", "mine")
    found = await store.queue.task_of_request("ada", "placed")
    assert (found.task.task_id, found.fingerprint) == (placed.task_id, "fp-2")
    assert await store.queue.task_of_request("grace", "mine") is None  # in its owner's namespace only
    assert await store.queue.task_of_request("ada", "mine", rerun=True) is None  # reruns' ids are apart
    assert await store.queue.task_of_request("ada", "never") is None


async def test_claims_come_in_priority_order_fifo_within_a_priority(store):
    made = []
    for priority in (1, 5, 1, 5, 3):
        task, event = new_task(priority=priority)
        await store.queue.create_task(task, event)
        made.append((priority, task.task_id))
    claimed = []
    while (claim := await store.queue.claim_task("me", 30)) is not None:
        claimed.append(claim[0].task_id)
    expected = [i for _, i in sorted(made, key=lambda p: -p[0])]  # sorted() is stable: FIFO within a priority
    assert claimed == expected


async def test_an_expired_lease_is_taken_over_and_the_old_holder_is_fenced_out(store):
    task, event = new_task()
    await store.queue.create_task(task, event)
    _, old_token = await store.queue.claim_task("replica-a", 0.2)
    assert await renew(store, {task.task_id: old_token}, 0.2) == []
    assert await store.queue.claim_task("replica-b", 30) is None
    await asyncio.sleep(0.3)
    assert await store.queue.release_expired_leases() == 1
    taken, new_token = await store.queue.claim_task("replica-b", 30)
    assert taken.task_id == task.task_id and new_token > old_token
    assert await renew(store, {task.task_id: old_token}, 30) == [task.task_id]
    assert await renew(store, {taken.task_id: new_token}, 30) == []
    with pytest.raises(LeaseLost):
        await store.tasks.save_checkpoint(checkpoint(taken, old_token, task_pb2.TASK_STATUS_RUNNING, []))
    await store.tasks.save_checkpoint(checkpoint(taken, new_token, task_pb2.TASK_STATUS_RUNNING, []))


async def test_an_expired_lease_fences_its_holder_out_as_it_is_released_not_at_the_next_claim(store):
    """A holder cut off from the store while its lease ran out must not write once the lease went
    back to the queue: nobody has claimed the task yet, but the next claimer resumes from what the
    store holds then, and a late write would change it under that claimer's feet."""
    task, event = new_task()
    await store.queue.create_task(task, event)
    _, token = await store.queue.claim_task("replica-a", 0.2)
    await asyncio.sleep(0.3)
    assert await store.queue.release_expired_leases() == 1
    with pytest.raises(LeaseLost):
        await store.tasks.save_checkpoint(checkpoint(task, token, task_pb2.TASK_STATUS_RUNNING, []))
    assert await renew(store, {task.task_id: token}, 30) == [task.task_id]
    taken, new_token = await store.queue.claim_task("replica-b", 30)
    assert taken.task_id == task.task_id and new_token > token + 1
    await store.tasks.save_checkpoint(checkpoint(taken, new_token, task_pb2.TASK_STATUS_RUNNING, []))


async def test_finished_tasks_hold_no_lease(store):
    task, event = new_task()
    await store.queue.create_task(task, event)
    await claim_and_complete(store, task, 0.1)
    await asyncio.sleep(0.2)
    assert await store.queue.release_expired_leases() == 0
    assert await store.queue.claim_task("me", 1) is None


async def test_cancel_pending_only_cancels_a_queued_task(store):
    task, event = new_task()
    await store.queue.create_task(task, event)
    cancel = task_pb2.TaskEvent(task_id=task.task_id, type=E.TASK_EVENT_TYPE_CANCELLED, message="stop")
    cancelled = await store.queue.cancel_pending(task.task_id, cancel)
    assert cancelled.status == task_pb2.TASK_STATUS_CANCELLED and cancelled.last_sequence == 2
    assert [e.type for e in await store.tasks.read_events(task.task_id, 0)] == [
        E.TASK_EVENT_TYPE_QUEUED,
        E.TASK_EVENT_TYPE_CANCELLED,
    ]
    assert await store.queue.claim_task("me", 1) is None
    assert await store.queue.cancel_pending(task.task_id, cancel) is None
    running, running_event = new_task()
    await store.queue.create_task(running, running_event)
    await store.queue.claim_task("me", 30)
    assert await store.queue.cancel_pending(running.task_id, cancel) is None
