"""The fair queue's contract, on every backend: round robin across groups within a priority,
priority first, a group's cap on running tasks, and what frees a place under it."""

from __future__ import annotations

import asyncio

import pytest

from mcp_sdk.proto import task_pb2
from mcp_server.engine.events import make_event
from mcp_server.engine.ports import QueueGroup
from tests.contract.conftest import E, checkpoint, new_task

pytestmark = pytest.mark.asyncio
S = task_pb2.TaskStatus


async def queue(store, owner: str, count: int, priority: int = 0, group: QueueGroup | None = None) -> list[str]:
    made = []
    for _ in range(count):
        task, event = new_task(owner=owner, priority=priority)
        stored, _ = await store.queue.create_task(task, event, group=group)
        made.append(stored.task_id)
    return made


async def claim_one_by_one(store) -> list[str]:
    claimed = []
    while (claim := await store.queue.claim_task("me", 30)) is not None:
        claimed.append(claim[0].task_id)
    return claimed


async def test_a_new_owner_goes_before_another_owners_backlog(store):
    backlog = await queue(store, "big", 12)
    (small,) = await queue(store, "small", 1)
    claimed = await claim_one_by_one(store)
    assert sorted(claimed) == sorted([*backlog, small])
    assert claimed.index(small) <= 1, claimed


async def test_owners_take_turns_and_each_keeps_its_order(store):
    a = await queue(store, "a", 4)
    b = await queue(store, "b", 4)
    claimed = await claim_one_by_one(store)
    assert [t for t in claimed if t in a] == a and [t for t in claimed if t in b] == b
    # taking turns: neither owner gets three grants in a row
    owners = ["a" if t in a else "b" for t in claimed]
    assert all(len(set(owners[i : i + 3])) == 2 for i in range(len(owners) - 2)), owners


async def test_priority_comes_before_turns(store):
    low = await queue(store, "a", 3, priority=0)
    high = await queue(store, "b", 3, priority=5)
    claimed = await claim_one_by_one(store)
    assert claimed[:3] == high and sorted(claimed[3:]) == sorted(low)


async def test_a_capped_group_runs_at_most_its_cap_and_a_finished_task_frees_a_place(store):
    group = QueueGroup.of_key("wf", "tenant-1", 2)
    made = await queue(store, "x", 5, group=group)
    first = await store.queue.claim_tasks("me", 30, 5)
    assert [t.task_id for t, _ in first] == made[:2]
    assert await store.queue.claim_tasks("me", 30, 5) == []
    members = await store.queue.group_members(group)
    assert sorted(m.task_id for m in members) == sorted(made)
    assert sorted(m.task_id for m in members if m.running) == sorted(made[:2])
    task, token = first[0]
    done = [make_event(task.task_id, 2, E.TASK_EVENT_TYPE_COMPLETED)]
    await store.tasks.save_checkpoint(checkpoint(task, token, S.TASK_STATUS_COMPLETED, done))
    (third,) = await store.queue.claim_tasks("me", 30, 5)
    assert third[0].task_id == made[2]
    assert await store.queue.claim_task("me", 30) is None
    assert made[0] not in {m.task_id for m in await store.queue.group_members(group)}


async def test_a_waiting_task_does_not_count_and_a_lost_lease_frees_its_place(store):
    group = QueueGroup.of_key("wf", "tenant-2", 1)
    made = await queue(store, "x", 3, group=group)
    task, token = await store.queue.claim_task("me", 0.3)
    assert task.task_id == made[0]
    assert await store.queue.claim_task("me", 30) is None
    waits = [make_event(task.task_id, 2, E.TASK_EVENT_TYPE_STEP_WAITING)]
    await store.tasks.save_checkpoint(checkpoint(task, token, S.TASK_STATUS_WAITING, waits))
    second, _ = await store.queue.claim_task("me", 0.3)
    assert second.task_id == made[1]
    assert await store.queue.claim_task("me", 30) is None
    await asyncio.sleep(0.4)  # its holder is gone: the lease runs out and the place is free
    assert await store.queue.release_expired_leases() == 1
    again, _ = await store.queue.claim_task("me", 30)
    assert again.task_id == made[1]
    assert await store.queue.claim_task("me", 30) is None


async def test_a_task_started_at_once_waits_in_the_queue_when_its_group_is_full(store):
    group = QueueGroup.of_key("wf", "tenant-3", 1)
    task, event = new_task(owner="x")
    _, created, token = await store.queue.create_leased(task, event, "here", 30, group=group)
    assert created and token == 1
    other, other_event = new_task(owner="x")
    _, created, token = await store.queue.create_leased(other, other_event, "here", 30, group=group)
    assert created and token == 0
    assert await store.queue.queue_length() == 1
    assert await store.queue.claim_task("me", 30) is None


async def test_queue_counts_see_every_group(store):
    await queue(store, "a", 3, priority=1)
    await queue(store, "b", 2, priority=1)
    await queue(store, "c", 1, priority=4, group=QueueGroup.of_key("wf", "k", 1))
    assert await store.queue.queue_length() == 6
    assert await store.queue.queue_depth_by_priority() == {1: 5, 4: 1}
