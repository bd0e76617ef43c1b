"""The TaskStore contract: every backend (SQLite, one Redis node, a Redis Cluster) behaves the same."""

from __future__ import annotations

import asyncio

import pytest

from mcp_sdk.proto import task_pb2
from mcp_server.engine.events import make_event
from mcp_server.engine.ports import StepRecord, TaskFilter
from mcp_server.errors import LeaseLost
from mcp_server.state import open_store
from tests.contract.conftest import E, checkpoint, claim_and_complete, ids, new_task

pytestmark = pytest.mark.asyncio


async def test_a_checkpoint_writes_header_steps_values_and_events_together_fenced_by_the_lease(store):
    task, event = new_task()
    await store.queue.create_task(task, event)
    claimed, token = await store.queue.claim_task("replica-a", 30)
    assert claimed.input_data["n"] == 1 and claimed.status == task_pb2.TASK_STATUS_PENDING
    step = task_pb2.StepState(
        path="root",
        node_id="root",
        kind="step",
        status=task_pb2.STEP_STATUS_RUNNING,
        input_ref=task_pb2.ValueRef(sha256="d1", size_bytes=5),
    )
    await store.tasks.save_checkpoint(
        checkpoint(
            claimed,
            token,
            task_pb2.TASK_STATUS_RUNNING,
            [
                make_event(task.task_id, 2, E.TASK_EVENT_TYPE_STARTED),
                make_event(task.task_id, 3, E.TASK_EVENT_TYPE_STEP_STARTED, step_path="root"),
            ],
            [StepRecord(0, "root", step.SerializeToString())],
            {"d1": b"value"},
        )
    )
    assert [e.sequence for e in await store.tasks.read_events(task.task_id, 0)] == [1, 2, 3]
    assert [e.sequence for e in await store.tasks.read_events(task.task_id, 2)] == [3]
    read = await store.tasks.get_task(task.task_id)
    assert (read.status, read.last_sequence, read.step_count, read.input_data["n"]) == (
        task_pb2.TASK_STATUS_RUNNING,
        3,
        1,
        1,
    )
    assert [(r.index, r.path) for r in await store.tasks.read_steps(task.task_id, 0, 10)] == [(0, "root")]
    assert (
        task_pb2.StepState.FromString((await store.tasks.read_step(task.task_id, "root")).data).input_ref.sha256 == "d1"
    )
    assert await store.tasks.read_values(task.task_id, ["d1", "nope"]) == {"d1": b"value"}
    with pytest.raises(LeaseLost):
        await store.tasks.save_checkpoint(
            checkpoint(
                claimed,
                token + 1,
                task_pb2.TASK_STATUS_RUNNING,
                [make_event(task.task_id, 4, E.TASK_EVENT_TYPE_PROGRESS)],
            )
        )
    assert [e.sequence for e in await store.tasks.read_events(task.task_id, 0)] == [1, 2, 3]


async def test_a_repeated_checkpoint_changes_nothing(store):
    # A reply lost to a dropped connection is answered by sending the same checkpoint again.
    task, event = new_task()
    await store.queue.create_task(task, event)
    claimed, token = await store.queue.claim_task("me", 30)
    same = checkpoint(
        claimed,
        token,
        task_pb2.TASK_STATUS_RUNNING,
        [make_event(task.task_id, 2, E.TASK_EVENT_TYPE_STARTED)],
        [StepRecord(0, "a", task_pb2.StepState(path="a").SerializeToString())],
        {"d": b"v"},
    )
    await store.tasks.save_checkpoint(same)
    await store.tasks.save_checkpoint(same)
    assert [e.sequence for e in await store.tasks.read_events(task.task_id, 0)] == [1, 2]
    assert [r.path for r in await store.tasks.read_steps(task.task_id, 0, 10)] == ["a"]


async def test_step_records_are_kept_by_index_and_rewritten_in_place(store):
    task, event = new_task()
    await store.queue.create_task(task, event)
    claimed, token = await store.queue.claim_task("me", 30)
    sequence = 1
    for index in range(250):
        sequence += 1
        state = task_pb2.StepState(path=f"root/s{index}", status=task_pb2.STEP_STATUS_RUNNING)
        started = make_event(task.task_id, sequence, E.TASK_EVENT_TYPE_STEP_STARTED)
        await store.tasks.save_checkpoint(
            checkpoint(
                claimed,
                token,
                task_pb2.TASK_STATUS_RUNNING,
                [started],
                [StepRecord(index, state.path, state.SerializeToString())],
            )
        )
    done = task_pb2.StepState(path="root/s7", status=task_pb2.STEP_STATUS_COMPLETED)
    await store.tasks.save_checkpoint(
        checkpoint(
            claimed, token, task_pb2.TASK_STATUS_RUNNING, [], [StepRecord(7, done.path, done.SerializeToString())]
        )
    )
    page = await store.tasks.read_steps(task.task_id, 5, 4)
    assert [(r.index, r.path) for r in page] == [(i, f"root/s{i}") for i in range(5, 9)]
    assert task_pb2.StepState.FromString(page[2].data).status == task_pb2.STEP_STATUS_COMPLETED
    assert len(await store.tasks.read_steps(task.task_id, 0, 10_000)) == 250
    assert await store.tasks.read_steps(task.task_id, 250, 10) == []
    assert await store.tasks.read_step(task.task_id, "root/nope") is None


async def test_wait_events_wakes_when_the_log_grows(store):
    task, event = new_task()
    await store.queue.create_task(task, event)
    claimed, token = await store.queue.claim_task("me", 30)
    waiter = asyncio.create_task(store.tasks.wait_events(task.task_id, 1, timeout=3.0))
    await asyncio.sleep(0.1)
    await store.tasks.save_checkpoint(
        checkpoint(
            claimed, token, task_pb2.TASK_STATUS_RUNNING, [make_event(task.task_id, 2, E.TASK_EVENT_TYPE_STARTED)]
        )
    )
    got = await asyncio.wait_for(waiter, 3.0)
    assert [e.sequence for e in got] == [2]
    assert await store.tasks.wait_events(task.task_id, 2, timeout=0.1) == []


async def test_list_tasks_filters_and_pages(store):
    made = []
    for i in range(5):
        task, event = new_task(workflow_id="a" if i % 2 == 0 else "b")
        await store.queue.create_task(task, event)
        made.append(task)
    page = await store.tasks.list_tasks(2, "", TaskFilter(workflow_id="a"))
    assert page.more and page.total == 3
    rest = await store.tasks.list_tasks(2, page.after[-1], TaskFilter(workflow_id="a"))
    assert ids(page) + ids(rest) == [made[4].task_id, made[2].task_id, made[0].task_id]
    assert not rest.more
    assert (await store.tasks.list_tasks(10, "", TaskFilter(statuses=(task_pb2.TASK_STATUS_COMPLETED,)))).tasks == []


async def test_list_tasks_reads_the_index_of_the_status_owner_and_workflow_asked_for(store):
    mine = []
    for i in range(6):
        task, event = new_task(workflow_id="w1" if i % 2 else "w2", owner="ann" if i < 4 else "ben")
        await store.queue.create_task(task, event)
        mine.append(task)
    await claim_and_complete(store, mine[0], 30)  # the oldest: claims go oldest first
    completed = (task_pb2.TASK_STATUS_COMPLETED,)
    assert ids(await store.tasks.list_tasks(10, "", TaskFilter(owner="ann"))) == [t.task_id for t in reversed(mine[:4])]
    assert ids(await store.tasks.list_tasks(10, "", TaskFilter(statuses=completed, owner="ann"))) == [mine[0].task_id]
    assert ids(await store.tasks.list_tasks(10, "", TaskFilter(statuses=completed, owner="ben"))) == []
    both = await store.tasks.list_tasks(10, "", TaskFilter(owner="ann", workflow_id="w1"))
    assert ids(both) == [mine[3].task_id, mine[1].task_id]
    pending = await store.tasks.list_tasks(
        10, "", TaskFilter(statuses=(task_pb2.TASK_STATUS_PENDING,), workflow_id="w2")
    )
    assert ids(pending) == [mine[4].task_id, mine[2].task_id] and pending.total == 2
    any_status = await store.tasks.list_tasks(
        10, "", TaskFilter(statuses=(task_pb2.TASK_STATUS_PENDING, task_pb2.TASK_STATUS_COMPLETED))
    )
    assert ids(any_status) == [t.task_id for t in reversed(mine)] and any_status.total == 6


async def test_finished_tasks_expire_after_the_retention_time(any_store_url):
    store = await open_store(any_store_url, retention_seconds=0.3)
    try:
        task, event = new_task()
        await store.queue.create_task(task, event)
        await claim_and_complete(store, task, 30)
        keeper, keeper_event = new_task()
        await store.queue.create_task(keeper, keeper_event)
        assert await store.tasks.get_task(task.task_id) is not None
        await asyncio.sleep(0.5)
        await store.tasks.purge_finished()
        assert await store.tasks.get_task(task.task_id) is None
        assert await store.tasks.read_events(task.task_id, 0) == []
        assert (
            await store.tasks.read_steps(task.task_id, 0, 10) == []
            and await store.tasks.read_values(task.task_id, ["d"]) == {}
        )
        assert ids(await store.tasks.list_tasks(10, "", TaskFilter())) == [keeper.task_id]  # the pending task stays
        assert ids(await store.tasks.list_tasks(10, "", TaskFilter(statuses=(task_pb2.TASK_STATUS_COMPLETED,)))) == []
    finally:
        await store.close()


async def test_list_paging_is_stable_while_tasks_come_and_go(store):
    older = []
    for _ in range(6):
        task, event = new_task()
        await store.queue.create_task(task, event)
        older.append(task.task_id)
    first = await store.tasks.list_tasks(3, "", TaskFilter())
    for _ in range(3):  # newer tasks arrive between pages
        task, event = new_task()
        await store.queue.create_task(task, event)
    second = await store.tasks.list_tasks(3, first.after[-1], TaskFilter())
    assert ids(first) + ids(second) == list(reversed(older))
    assert not second.more
