"""BulkActionStore on every store: an action is stored once per request id, at most N run per
owner, one replica holds it at a time (its claim is a lease), every write is compare-and-set on
its version, listings are newest first, and ended actions are purged after their time. ListTasks'
time filters, on the same stores."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from dataclasses import replace

import pytest

from mcp_server.engine.ports import BulkRecord, TaskFilter
from mcp_server.errors import ResourceExhausted
from mcp_server.state import open_store
from mcp_server.state.common import now_seconds
from tests.contract.conftest import new_task

pytestmark = pytest.mark.asyncio


def record(owner: str, request_id: str = "", n: int = 0) -> BulkRecord:
    action_id = f"ba{int(time.time() * 1000) + n:012x}{uuid.uuid4().hex[:12]}"
    return BulkRecord(action_id, owner, b"data-" + action_id.encode(), request_id=request_id, admin=owner == "root")


def now_ms() -> int:
    return int(now_seconds() * 1000)


async def test_an_action_is_stored_once_per_request_and_at_most_n_run_per_owner(store):
    owner = f"ann-{uuid.uuid4().hex[:6]}"
    first, created = await store.bulk_actions.create_bulk_action(record(owner, "req-1"), 2)
    assert created and first.version == 1 and first.running
    again, created = await store.bulk_actions.create_bulk_action(record(owner, "req-1"), 2)
    assert not created and again.action_id == first.action_id and again.data == first.data
    await store.bulk_actions.create_bulk_action(record(owner, n=1), 2)
    with pytest.raises(ResourceExhausted) as refused:
        await store.bulk_actions.create_bulk_action(record(owner, n=2), 2)
    assert refused.value.reason == "BULK_ACTIONS_RUNNING"
    _, created = await store.bulk_actions.create_bulk_action(record(f"bob-{owner}"), 2)
    assert created  # the limit is each owner's own
    ended = await store.bulk_actions.save_bulk_action(replace(first, running=False), 0)
    assert ended is not None and not ended.running
    _, created = await store.bulk_actions.create_bulk_action(record(owner, n=3), 2)
    assert created  # one ended: room for another
    stored = await store.bulk_actions.get_bulk_action(first.action_id)
    assert stored is not None and stored.request_id == "req-1" and not stored.running and stored.owner == owner


async def test_a_claim_is_a_lease_and_every_write_names_the_version_it_read(store):
    owner = f"cy-{uuid.uuid4().hex[:6]}"
    made, _ = await store.bulk_actions.create_bulk_action(record(owner), 5)
    claimed = [r for r in await store.bulk_actions.claim_bulk_actions(now_ms(), 60_000, 100) if r.owner == owner]
    assert [r.action_id for r in claimed] == [made.action_id] and claimed[0].version == made.version + 1
    assert not [r for r in await store.bulk_actions.claim_bulk_actions(now_ms(), 60_000, 100) if r.owner == owner]
    assert await store.bulk_actions.save_bulk_action(replace(made, cursor="x"), now_ms()) is None  # stale
    saved = await store.bulk_actions.save_bulk_action(replace(claimed[0], cursor="page-2"), now_ms() - 1)
    assert saved is not None and saved.version == claimed[0].version + 1
    again = [r for r in await store.bulk_actions.claim_bulk_actions(now_ms(), 60_000, 100) if r.owner == owner]
    assert [r.cursor for r in again] == ["page-2"]  # due again at once, where it got to
    ended = await store.bulk_actions.save_bulk_action(replace(again[0], running=False), now_ms())
    assert ended is not None
    await asyncio.sleep(0.01)
    assert not [r for r in await store.bulk_actions.claim_bulk_actions(now_ms(), 60_000, 100) if r.owner == owner]


async def test_listings_are_newest_first_per_owner_and_ended_actions_are_purged(store):
    owner = f"di-{uuid.uuid4().hex[:6]}"
    made = [(await store.bulk_actions.create_bulk_action(record(owner, n=i), 10))[0] for i in range(5)]
    listed = await store.bulk_actions.list_bulk_actions(owner, "", 3)
    assert [r.action_id for r in listed] == [r.action_id for r in reversed(made)][:3]
    rest = await store.bulk_actions.list_bulk_actions(owner, listed[-1].action_id, 3)
    assert [r.action_id for r in rest] == [made[1].action_id, made[0].action_id]
    everyone = await store.bulk_actions.list_bulk_actions(None, "", 1000)
    assert {r.action_id for r in made} <= {r.action_id for r in everyone}
    for r in made[:2]:
        assert await store.bulk_actions.save_bulk_action(replace(r, running=False), 0) is not None
    await asyncio.sleep(0.01)
    purged = await store.bulk_actions.purge_bulk_actions(now_ms() + 1, 1000)
    assert purged >= 2
    left = await store.bulk_actions.list_bulk_actions(owner, "", 10)
    assert [r.action_id for r in left] == [r.action_id for r in reversed(made[2:])]
    assert await store.bulk_actions.get_bulk_action(made[0].action_id) is None


async def test_list_tasks_filters_by_creation_time_and_counts_within_it(store):
    workflow_id = f"timed-{uuid.uuid4().hex[:6]}"
    early = [new_task(workflow_id) for _ in range(3)]
    for task, event in early:
        await store.queue.create_task(task, event)
    await asyncio.sleep(0.05)
    middle = int(now_seconds() * 1_000_000)
    await asyncio.sleep(0.05)
    late = []
    for _ in range(4):
        task, event = new_task(workflow_id)
        task.create_time.FromMicroseconds(int(now_seconds() * 1_000_000))
        await store.queue.create_task(task, event)
        late.append(task.task_id)
    after = await store.tasks.list_tasks(10, "", TaskFilter(workflow_id=workflow_id, created_after_us=middle))
    assert [t.task_id for t in after.tasks] == list(reversed(late))
    before = await store.tasks.list_tasks(2, "", TaskFilter(workflow_id=workflow_id, created_before_us=middle))
    assert [t.task_id for t in before.tasks] == [early[2][0].task_id, early[1][0].task_id] and before.more
    page = await store.tasks.list_tasks(
        2, before.after[-1], TaskFilter(workflow_id=workflow_id, created_before_us=middle)
    )
    assert [t.task_id for t in page.tasks] == [early[0][0].task_id] and not page.more
    if before.total:  # the count, where the store gives one, is of the range
        assert (before.total, after.total) == (3, 4)
    both = TaskFilter(workflow_id=workflow_id, created_after_us=middle, created_before_us=middle + 1)
    assert (await store.tasks.list_tasks(10, "", both)).tasks == []


async def test_an_sqlite_file_from_before_creation_times_gets_them_when_it_opens(tmp_path):
    path = tmp_path / "old.db"
    store = await open_store(f"sqlite:///{path}")
    task, event = new_task("old")
    await store.queue.create_task(task, event)
    await store.close()
    with sqlite3.connect(path) as db:  # as a server before this one left it
        db.execute("DROP INDEX tasks_created")
        db.execute("ALTER TABLE tasks DROP COLUMN created_us")
    store = await open_store(f"sqlite:///{path}")
    try:
        created = task.create_time.ToMicroseconds()
        found = await store.tasks.list_tasks(
            10, "", TaskFilter(created_after_us=created, created_before_us=created + 1)
        )
        assert [t.task_id for t in found.tasks] == [task.task_id]
    finally:
        await store.close()
    with sqlite3.connect(path) as db:  # as an older server writes it, after a rolled back upgrade
        db.execute("UPDATE tasks SET created_us=0")
    store = await open_store(f"sqlite:///{path}")
    try:
        window = TaskFilter(created_after_us=created, created_before_us=created + 1)
        assert [t.task_id for t in (await store.tasks.list_tasks(10, "", window)).tasks] == [task.task_id]
    finally:
        await store.close()
