"""The bulk action worker's scheduling, on a real (embedded) store: an action whose reruns are slow
does not hold up one started after it on the same replica, and stopping the worker stops what it
works on (the action stays RUNNING, for any replica to take up when its lease ends)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping

import pytest

from mcp_sdk.proto import bulk_pb2, task_pb2
from mcp_server.auth import ANONYMOUS_ADMIN, Principal
from mcp_server.bulk.worker import BulkWorker
from mcp_server.engine.ports import Store
from mcp_server.service.bulk import BulkActions
from mcp_server.settings import Settings
from mcp_server.state import open_store

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
