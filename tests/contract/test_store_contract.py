"""The Store contract: every backend (embedded SQLite, Redis) must behave the same."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from mcp_server.engine.context import make_event, now
from mcp_server.errors import LeaseLost
from mcp_server.proto import protocol_pb2, registry_pb2, task_pb2, workflow_pb2
from mcp_server.state import open_store

pytestmark = pytest.mark.asyncio
E = task_pb2.TaskEventType


@pytest.fixture
async def store(store_url):
    opened = await open_store(store_url)
    yield opened
    await opened.close()


def new_task(workflow_id: str = "wf", priority: int = 0, request_id: str = "") -> tuple[task_pb2.Task, task_pb2.TaskEvent]:
    task = task_pb2.Task(task_id=uuid.uuid4().hex, workflow_id=workflow_id, workflow_version=1, priority=priority,
                         status=task_pb2.TASK_STATUS_PENDING, request_id=request_id, create_time=now(), last_sequence=1)
    return task, make_event(task.task_id, 1, E.TASK_EVENT_TYPE_QUEUED)


async def claim_and_complete(store, task: task_pb2.Task, lease_seconds: float) -> None:
    """Claim `task` and write it COMPLETED with its terminal event."""
    claimed, token = await store.claim_task("me", lease_seconds)
    claimed.status = task_pb2.TASK_STATUS_COMPLETED
    claimed.last_sequence = 2
    await store.save_task(claimed, [make_event(task.task_id, 2, E.TASK_EVENT_TYPE_COMPLETED)], token)


async def test_workflow_versions_are_numbered_and_immutable(store):
    first = await store.create_workflow(workflow_pb2.Workflow(workflow_id="w", description="1"))
    second = await store.create_workflow(workflow_pb2.Workflow(workflow_id="w", description="2"))
    assert (first.version, second.version) == (1, 2)
    assert (await store.get_workflow("w")).description == "2"
    assert (await store.get_workflow("w", 1)).description == "1"
    assert await store.get_workflow("w", 3) is None
    assert await store.delete_workflow("w") == 2
    assert await store.get_workflow("w") is None


async def test_request_id_dedupes_task_creation(store):
    task, event = new_task(request_id="same")
    created, fresh = await store.create_task(task, event)
    again_task, again_event = new_task(request_id="same")
    existing, fresh_again = await store.create_task(again_task, again_event)
    assert fresh and not fresh_again and existing.task_id == created.task_id
    assert await store.queue_length() == 1


async def test_claims_come_in_priority_order_fifo_within_a_priority(store):
    ids = []
    for priority in (1, 5, 1, 5, 3):
        task, event = new_task(priority=priority)
        await store.create_task(task, event)
        ids.append((priority, task.task_id))
    claimed = []
    while (claim := await store.claim_task("me", 30)) is not None:
        claimed.append(claim[0].task_id)
    expected = [i for _, i in sorted(ids, key=lambda p: -p[0])]  # sorted() is stable: FIFO within a priority
    assert claimed == expected


async def test_snapshot_and_events_are_written_together_and_fenced_by_the_lease(store):
    task, event = new_task()
    await store.create_task(task, event)
    claimed, token = await store.claim_task("replica-a", 30)
    claimed.status = task_pb2.TASK_STATUS_RUNNING
    claimed.last_sequence = 3
    await store.save_task(claimed, [make_event(task.task_id, 2, E.TASK_EVENT_TYPE_STARTED),
                                    make_event(task.task_id, 3, E.TASK_EVENT_TYPE_STEP_STARTED, step_path="root")], token)
    assert [e.sequence for e in await store.read_events(task.task_id, 0)] == [1, 2, 3]
    assert [e.sequence for e in await store.read_events(task.task_id, 2)] == [3]
    assert (await store.get_task(task.task_id)).status == task_pb2.TASK_STATUS_RUNNING
    with pytest.raises(LeaseLost):
        await store.save_task(claimed, [make_event(task.task_id, 4, E.TASK_EVENT_TYPE_PROGRESS)], token + 1)
    assert [e.sequence for e in await store.read_events(task.task_id, 0)] == [1, 2, 3]


async def test_an_expired_lease_is_taken_over_and_the_old_holder_is_fenced_out(store):
    task, event = new_task()
    await store.create_task(task, event)
    _, old_token = await store.claim_task("replica-a", 0.2)
    assert await store.renew_leases({task.task_id: old_token}, 0.2) == []
    assert await store.claim_task("replica-b", 30) is None
    await asyncio.sleep(0.3)
    assert await store.release_expired_leases() == 1
    taken, new_token = await store.claim_task("replica-b", 30)
    assert taken.task_id == task.task_id and new_token > old_token
    assert await store.renew_leases({task.task_id: old_token}, 30) == [task.task_id]
    assert await store.renew_leases({taken.task_id: new_token}, 30) == []
    with pytest.raises(LeaseLost):
        await store.save_task(taken, [], old_token)
    await store.save_task(taken, [], new_token)


async def test_finished_tasks_hold_no_lease(store):
    task, event = new_task()
    await store.create_task(task, event)
    await claim_and_complete(store, task, 0.1)
    await asyncio.sleep(0.2)
    assert await store.release_expired_leases() == 0
    assert await store.claim_task("me", 1) is None


async def test_cancel_pending_only_cancels_a_queued_task(store):
    task, event = new_task()
    await store.create_task(task, event)
    cancel = task_pb2.TaskEvent(task_id=task.task_id, type=E.TASK_EVENT_TYPE_CANCELLED, message="stop")
    cancelled = await store.cancel_pending(task.task_id, cancel)
    assert cancelled.status == task_pb2.TASK_STATUS_CANCELLED and cancelled.last_sequence == 2
    assert [e.type for e in await store.read_events(task.task_id, 0)] == [E.TASK_EVENT_TYPE_QUEUED, E.TASK_EVENT_TYPE_CANCELLED]
    assert await store.claim_task("me", 1) is None
    assert await store.cancel_pending(task.task_id, cancel) is None
    running, running_event = new_task()
    await store.create_task(running, running_event)
    await store.claim_task("me", 30)
    assert await store.cancel_pending(running.task_id, cancel) is None


async def test_wait_events_wakes_when_the_log_grows(store):
    task, event = new_task()
    await store.create_task(task, event)
    claimed, token = await store.claim_task("me", 30)
    waiter = asyncio.create_task(store.wait_events(task.task_id, 1, timeout=3.0))
    await asyncio.sleep(0.1)
    claimed.last_sequence = 2
    await store.save_task(claimed, [make_event(task.task_id, 2, E.TASK_EVENT_TYPE_STARTED)], token)
    got = await asyncio.wait_for(waiter, 3.0)
    assert [e.sequence for e in got] == [2]
    assert await store.wait_events(task.task_id, 2, timeout=0.1) == []


async def test_list_tasks_filters_and_pages(store):
    made = []
    for i in range(5):
        task, event = new_task(workflow_id="a" if i % 2 == 0 else "b")
        await store.create_task(task, event)
        made.append(task)
    page, token = await store.list_tasks(2, "", [], "a")
    rest, end = await store.list_tasks(2, token, [], "a")
    assert [t.task_id for t in page + rest] == [made[4].task_id, made[2].task_id, made[0].task_id]
    assert end == ""
    pending, _ = await store.list_tasks(10, "", [task_pb2.TASK_STATUS_COMPLETED], "")
    assert pending == []


async def test_registry_entries_round_trip(store):
    entry = registry_pb2.RegisteredProtocol(address="127.0.0.1:9", manifest=protocol_pb2.ProtocolManifest(name="p"))
    await store.put_protocol(entry)
    assert [e.manifest.name for e in await store.list_protocol_entries()] == ["p"]
    assert await store.delete_protocols(address="127.0.0.1:9") == 1
    assert await store.list_protocol_entries() == []


async def test_finished_tasks_expire_after_the_retention_time(store_url):
    store = await open_store(store_url, retention_seconds=0.3)
    try:
        task, event = new_task()
        await store.create_task(task, event)
        await claim_and_complete(store, task, 30)
        keeper, keeper_event = new_task()
        await store.create_task(keeper, keeper_event)
        assert await store.get_task(task.task_id) is not None
        await asyncio.sleep(0.5)
        await store.purge_finished()
        assert await store.get_task(task.task_id) is None
        assert await store.read_events(task.task_id, 0) == []
        listed, _ = await store.list_tasks(10, "", [], "")
        assert [t.task_id for t in listed] == [keeper.task_id]  # the pending task stays
    finally:
        await store.close()


async def test_list_paging_is_stable_while_tasks_come_and_go(store):
    older = []
    for _ in range(6):
        task, event = new_task()
        await store.create_task(task, event)
        older.append(task.task_id)
    first, token = await store.list_tasks(3, "", [], "")
    for _ in range(3):  # newer tasks arrive between pages
        task, event = new_task()
        await store.create_task(task, event)
    second, end = await store.list_tasks(3, token, [], "")
    assert [t.task_id for t in first + second] == list(reversed(older))
    assert end == ""
