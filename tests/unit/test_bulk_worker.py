"""The bulk action worker's scheduling, on a real (embedded) store: an action whose reruns are slow
does not hold up one started after it on the same replica, and stopping the worker stops what it
works on (the action stays RUNNING, for any replica to take up when its lease ends)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping

import pytest

from mcp_sdk.proto import bulk_pb2, task_pb2
from mcp_server.auth import ANONYMOUS_ADMIN, Principal
from mcp_server.bulk.worker import BulkWorker
from mcp_server.engine.ports import BulkActionStore, BulkRecord, Store
from mcp_server.engine.queued_cancels import cancel_queued
from mcp_server.service.bulk import BulkActions
from mcp_server.settings import Settings
from mcp_server.state import open_store
from tests.contract.conftest import new_task

pytestmark = pytest.mark.asyncio
B = bulk_pb2
Rerun = Callable[[task_pb2.RerunTaskRequest, Principal, Mapping[str, str]], Awaitable[tuple[task_pb2.Task, bool]]]


async def no_cancel(task_id: str, why: str) -> None:
    raise AssertionError("no task here is cancelled")


async def no_delete(task_id: str, principal: Principal, allow_missing: bool) -> bool:
    return False


def worker_on(store: Store, rerun: Rerun, lease_seconds: float) -> tuple[BulkActions, BulkWorker]:
    """The service that starts actions and a worker on `store` whose reruns are `rerun`."""
    actions = BulkActions(Settings(), store.bulk_actions)
    worker = BulkWorker(
        store.bulk_actions, store.tasks, no_cancel, rerun, no_delete, actions.started, lease_seconds, 3600.0
    )
    return actions, worker


async def test_a_slow_action_does_not_hold_up_one_started_after_it() -> None:
    store = await open_store("sqlite://:memory:")
    released = asyncio.Event()
    reruns: list[str] = []

    async def slow_rerun(
        request: task_pb2.RerunTaskRequest, principal: Principal, labels: Mapping[str, str]
    ) -> tuple[task_pb2.Task, bool]:
        await released.wait()  # a rerun that takes as long as the test wants
        reruns.append(request.task_id)
        return task_pb2.Task(), True

    actions, worker = worker_on(store, slow_rerun, lease_seconds=15.0)
    running = asyncio.create_task(worker.run_forever())
    try:
        slow = await actions.start(
            B.StartBulkActionRequest(kind=B.BULK_ACTION_KIND_RERUN, selection=B.TaskSelection(task_ids=["a", "b"])),
            ANONYMOUS_ADMIN,
        )
        await asyncio.sleep(0.3)  # taken up, and waiting on its first reruns
        quick = await actions.start(
            B.StartBulkActionRequest(kind=B.BULK_ACTION_KIND_DELETE, selection=B.TaskSelection(task_ids=["c"])),
            ANONYMOUS_ADMIN,
        )
        async with asyncio.timeout(5):
            while (await actions.get(quick.action_id)).state == B.BULK_ACTION_STATE_RUNNING:
                await asyncio.sleep(0.02)
        assert (await actions.get(quick.action_id)).skipped == 1
        assert (await actions.get(slow.action_id)).state == B.BULK_ACTION_STATE_RUNNING and reruns == []
        released.set()
        async with asyncio.timeout(5):
            while (await actions.get(slow.action_id)).state == B.BULK_ACTION_STATE_RUNNING:
                await asyncio.sleep(0.02)
        assert sorted(reruns) == ["a", "b"] and (await actions.get(slow.action_id)).succeeded == 2
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await store.close()


async def test_stopping_the_worker_stops_its_actions_and_leaves_them_to_be_taken_up() -> None:
    store = await open_store("sqlite://:memory:")
    never = asyncio.Event()
    began, stopped = asyncio.Event(), asyncio.Event()

    async def stuck_rerun(
        request: task_pb2.RerunTaskRequest, principal: Principal, labels: Mapping[str, str]
    ) -> tuple[task_pb2.Task, bool]:
        began.set()
        try:
            await never.wait()
        finally:
            stopped.set()
        return task_pb2.Task(), True

    actions, worker = worker_on(store, stuck_rerun, lease_seconds=0.5)
    running = asyncio.create_task(worker.run_forever())
    action = await actions.start(
        B.StartBulkActionRequest(kind=B.BULK_ACTION_KIND_RERUN, selection=B.TaskSelection(task_ids=["a"])),
        ANONYMOUS_ADMIN,
    )
    await asyncio.wait_for(began.wait(), 5)
    running.cancel()
    await asyncio.gather(running, return_exceptions=True)
    await asyncio.wait_for(stopped.wait(), 5)  # the rerun in hand was stopped with the worker
    assert (await actions.get(action.action_id)).state == B.BULK_ACTION_STATE_RUNNING
    await asyncio.sleep(0.6)  # its lease ends: due again, for any replica
    claimed = await store.bulk_actions.claim_bulk_actions(10**15, 1000, 10)
    assert [r.action_id for r in claimed] == [action.action_id]
    await store.close()


class DiesBeforeRecording:
    """The bulk store as a worker that dies after acting on a page, before recording it, sees it:
    the save that would record what it acted on (its counts) fails (the replica is gone; the
    action's lease runs out)."""

    def __init__(self, store: BulkActionStore) -> None:
        self.store = store

    def __getattr__(self, name: str) -> object:
        return getattr(self.store, name)

    async def save_bulk_action(self, record: BulkRecord, due_ms: int) -> BulkRecord | None:
        if B.BulkAction.FromString(record.data).matched:
            raise ConnectionError("the replica died here")
        return await self.store.save_bulk_action(record, due_ms)


async def test_a_page_worked_on_again_after_its_worker_died_is_the_page_it_acted_on(store_url: str) -> None:
    """A filtered cancel's worker dies after cancelling its page's tasks, before recording it; the
    worker that takes the action over acts on the same tasks (each once: cancelled by this action
    already, they count as done), not on a new listing in which they no longer match the filter."""
    store = await open_store(store_url)
    tag = uuid.uuid4().hex[:8]
    made = []
    for _ in range(12):
        task, event = new_task()
        task.labels["batch"] = tag
        await store.queue.create_task(task, event)
        made.append(task.task_id)

    async def cancel_now(task_id: str, why: str) -> None:
        await cancel_queued(store.queue, [], task_id, why)

    actions = BulkActions(Settings(), store.bulk_actions)
    action = await actions.start(
        B.StartBulkActionRequest(
            kind=B.BULK_ACTION_KIND_CANCEL,
            selection=B.TaskSelection(statuses=[task_pb2.TASK_STATUS_PENDING], labels={"batch": tag}),
        ),
        ANONYMOUS_ADMIN,
    )

    def worker(on: BulkActionStore) -> BulkWorker:
        return BulkWorker(on, store.tasks, cancel_now, no_rerun, no_delete, asyncio.Event(), 0.2, 3600.0)

    try:
        (first,) = await store.bulk_actions.claim_bulk_actions(int(time.time() * 1000), 200, 1)
        with pytest.raises(ConnectionError):
            await worker(DiesBeforeRecording(store.bulk_actions)).work(first)
        assert [t.status for t in await asyncio.gather(*map(store.tasks.get_task, made))] == [
            task_pb2.TASK_STATUS_CANCELLED
        ] * 12
        await asyncio.sleep(0.3)  # its lease runs out: another replica claims it
        (again,) = await store.bulk_actions.claim_bulk_actions(int(time.time() * 1000), 200, 1)
        await worker(store.bulk_actions).work(again)
        done = await actions.get(action.action_id)
        assert done.state == B.BULK_ACTION_STATE_DONE
        assert (done.matched, done.succeeded, done.skipped) == (12, 12, 0)
    finally:
        await store.close()


async def no_rerun(
    request: task_pb2.RerunTaskRequest, principal: Principal, labels: Mapping[str, str]
) -> tuple[task_pb2.Task, bool]:
    raise AssertionError("no task here is rerun")
