"""A cancel through a replica that does not run the task, on Redis: the request is stored and told
to the running replica by a pub/sub nudge; where the Redis user may not publish, that replica's
poll finds it; and where nobody acts on it in time, CancelTask says so (DEADLINE_EXCEEDED,
CANCEL_PENDING) and the task still ends cancelled once its replica looks. A run that ends after a
request it did not hear of ends CANCELLED (the store refuses its completion), and a parked task
resumed with a request left for it acts on it first (both stores)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import redis

from mcp_sdk import Client as SdkClient
from mcp_sdk.proto import events_pb2_grpc, task_pb2
from tests.conftest import client_for
from tests.helpers import (
    create,
    error_reason,
    parked,
    plugin_stats,
    publish_request,
    seq,
    step,
    submit,
    wait_done,
    workflow,
)
from tests.integration.test_waits import other_replica

pytestmark = pytest.mark.asyncio
S = task_pb2.TaskStatus


@contextlib.asynccontextmanager
async def user_without(redis_url: str, commands: str) -> AsyncIterator[str]:
    """A store URL for a Redis user that may run every command but `commands` (a command or an
    ACL category such as `@pubsub`; in scripts too)."""
    user = f"no{commands.strip('@')}{uuid.uuid4().hex[:8]}"
    admin = redis.Redis.from_url(redis_url.split("?")[0])
    admin.acl_setuser(
        user, enabled=True, passwords=["+pw"], keys=["*"], channels=["*"], commands=["+@all", f"-{commands}"]
    )
    try:
        scheme, rest = redis_url.split("://", 1)
        yield f"{scheme}://{user}:pw@{rest}"
    finally:
        admin.acl_deluser(user)
        admin.close()


def user_without_pubsub(redis_url: str) -> contextlib.AbstractAsyncContextManager[str]:
    """A store URL for a Redis user that may run every command but pub/sub."""
    return user_without(redis_url, "@pubsub")


async def running_on_one(
    server_factory: Any, options: dict[str, Any], ms: int = 20000
) -> tuple[task_pb2.Task, Any, Any]:
    """Two replicas; a task napping `ms` on one of them; (the task, its holder's client, the other's;
    each client's `address` and `server` are its replica's)."""
    replicas = [await server_factory(**options), await server_factory(**options)]
    clients = [client_for(r) for r in replicas]
    for client, replica in zip(clients, replicas):
        client.address, client.server = replica.address, replica
    await create(clients[0], workflow("napping", step("nap", "sleep", f"{{'ms': {ms}}}")))
    task = await submit(clients[0], "napping")
    other = await other_replica(clients, replicas, task.task_id)
    holder = clients[1 - clients.index(other)]
    async with asyncio.timeout(10):
        while not (await holder.tasks.GetTask(task_pb2.GetTaskRequest(task_id=task.task_id))).task.steps:
            await asyncio.sleep(0.02)
    return task, holder, other


async def test_a_redis_user_that_may_not_publish_still_cancels_through_another_replica(
    server_factory, redis_url, testkit
):
    async with user_without_pubsub(redis_url) as store:
        before = (await plugin_stats(testkit))["cancelled"]
        task, _, other = await running_on_one(server_factory, {"store": store, "cancel_poll_seconds": 0.2})
        reply = await other.tasks.CancelTask(task_pb2.CancelTaskRequest(task_id=task.task_id, reason="by the poll"))
        assert reply.task.status == S.TASK_STATUS_CANCELLED and "by the poll" in reply.task.error.message
        assert (await plugin_stats(testkit))["cancelled"] == before + 1


async def test_a_cancel_nobody_acts_on_in_time_is_pending_and_still_happens(server_factory, redis_url):
    """The holder looks every 8 s and hears no nudge (no pub/sub); CancelTask waits the lease plus
    5 s (6.5 s here), then answers DEADLINE_EXCEEDED with CANCEL_PENDING, not an internal error;
    the holder's next look ends the task CANCELLED with the request's reason."""
    async with user_without_pubsub(redis_url) as store:
        options = {"store": store, "cancel_poll_seconds": 8, "lease_seconds": 1.5}
        task, holder, other = await running_on_one(server_factory, options)
        async with SdkClient(other.address) as sdk:  # a bulk pass meets the same and goes on

            async def bulk() -> list[Any]:
                return [outcome async for outcome in sdk.cancel_tasks(workflow_id="napping", reason="in a while")]

            cancelled = other.tasks.CancelTask(task_pb2.CancelTaskRequest(task_id=task.task_id, reason="in a while"))
            raw, passed = await asyncio.gather(cancelled, bulk(), return_exceptions=True)
        assert isinstance(raw, grpc.aio.AioRpcError) and raw.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert error_reason(raw) == "CANCEL_PENDING" and "the request is stored" in raw.details()
        assert [(o.task_id, o.error.reason if o.error else None) for o in passed] == [(task.task_id, "CANCEL_PENDING")]
        done = await wait_done(holder, task.task_id)
        assert done.status == S.TASK_STATUS_CANCELLED and "in a while" in done.error.message


async def test_a_run_that_ends_after_a_request_it_did_not_hear_of_ends_cancelled(server_factory, redis_url):
    """The holder hears no nudge and looks every 30 s; its step ends 2 s after the request was
    stored. The store refuses the completion, and the run ends the task CANCELLED with the
    request's reason instead: what CancelTask answered OK for is what happens. The step completed;
    there is no COMPLETED event, no result, and the events are numbered without a gap; the
    holder's metrics count the task cancelled, not completed too."""
    async with user_without_pubsub(redis_url) as store:
        task, holder, other = await running_on_one(server_factory, {"store": store, "cancel_poll_seconds": 30}, 2000)
        reply = await other.tasks.CancelTask(task_pb2.CancelTaskRequest(task_id=task.task_id, reason="not wanted"))
        assert reply.task.status == S.TASK_STATUS_CANCELLED and reply.task.error.message == "not wanted"
        done = (await holder.tasks.GetTask(task_pb2.GetTaskRequest(task_id=task.task_id))).task
        assert [s.status for s in done.steps] == [task_pb2.STEP_STATUS_COMPLETED]
        assert not done.HasField("result") and not done.HasField("result_ref")
        events = [e async for e in holder.tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=task.task_id))]
        kinds = [task_pb2.TaskEventType.Name(e.type) for e in events]
        assert "TASK_EVENT_TYPE_COMPLETED" not in kinds and kinds[-1] == "TASK_EVENT_TYPE_CANCELLED"
        assert [e.sequence for e in events] == list(range(1, len(events) + 1))
        finished = holder.server.orchestrator.metrics.registry.get_sample_value
        assert finished("mcp_tasks_finished_total", {"workflow": "napping", "status": "cancelled"}) == 1
        assert finished("mcp_tasks_finished_total", {"workflow": "napping", "status": "completed"}) is None


async def test_a_refused_completion_of_a_task_that_cleans_up_ends_it_cancelled_with_nothing_to_undo(
    server_factory, redis_url
):
    """The same with a recover node that cleans up on a cancel: its body had completed when the
    cancel came, so the cancel stopped nothing and no handler runs (docs/workflows.md); the task
    ends CANCELLED all the same."""
    async with user_without_pubsub(redis_url) as store:
        replicas = [await server_factory(store=store, cancel_poll_seconds=30) for _ in range(2)]
        clients = [client_for(r) for r in replicas]
        body, handler = step("nap", "sleep", "{'ms': 2000}"), step("undo", "echo")
        root = {"id": "r", "recover": {"body": body, "handler": handler, "on_cancel": True}}
        await create(clients[0], workflow("undoable", root))
        task = await submit(clients[0], "undoable")
        other = await other_replica(clients, replicas, task.task_id)
        async with asyncio.timeout(10):
            while not (await other.tasks.GetTask(task_pb2.GetTaskRequest(task_id=task.task_id))).task.steps:
                await asyncio.sleep(0.02)
        reply = await other.tasks.CancelTask(task_pb2.CancelTaskRequest(task_id=task.task_id, reason="not wanted"))
        assert reply.task.status == S.TASK_STATUS_CANCELLED and reply.task.error.message == "not wanted"
        states = {s.path: s.status for s in reply.task.steps}
        assert states["r/nap"] == task_pb2.STEP_STATUS_COMPLETED and "r/undo" not in states


async def test_a_parked_task_resumed_with_a_cancel_left_for_it_ends_before_its_next_step(parking_server):
    """A request left for a parked task that no replica acted on (none runs it: no poll finds it,
    and a nudge goes to the replica running a task) waits for the task's timer. The run that
    resumes it acts on the request before anything else: the step after the nap never runs, and
    the task ends CANCELLED with the request's reason (both stores)."""
    running, client = parking_server
    await create(
        client, workflow("napper", seq("root", {"id": "nap", "sleep": {"duration": "1.5s"}}, step("after", "echo")))
    )
    task = await submit(client, "napper")
    await parked(client, task.task_id, running)
    assert await running.orchestrator.store.queue.request_cancel(task.task_id, "left for it") is True
    done = await wait_done(client, task.task_id)
    assert done.status == S.TASK_STATUS_CANCELLED and done.error.message == "left for it"
    after = {s.path: s for s in done.steps}.get("root/after")
    assert after is None or after.status != task_pb2.STEP_STATUS_COMPLETED


async def test_a_call_off_the_store_does_not_take_fails_the_publish_and_goes_through_sent_again(
    server_factory, redis_url
):
    """A publish that calls off a task another replica runs, through a replica whose store refuses
    the request (here a Redis user that may not ZADD): the publish answers UNAVAILABLE rather than an
    OK the task would never honour, and the task runs on; sent again with its id through a replica
    the store serves, it lists the task, which ends CANCELLED by the event."""
    holder = await server_factory(store=redis_url)
    client = client_for(holder)
    called_off = [{"event": "order.cancelled", "key": "input.order"}]
    await create(client, workflow("order", step("nap", "sleep", "{'ms': 30000}"), cancel_on=called_off))
    order = f"o-{uuid.uuid4().hex[:8]}"
    task = await submit(client, "order", {"order": order})
    async with asyncio.timeout(10):
        while not (await client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=task.task_id))).task.steps:
            await asyncio.sleep(0.02)
    request = publish_request("order.cancelled", {}, key=order, request_id=f"cancel-{order}")
    async with user_without(redis_url, "zadd") as store:
        refused = client_for(await server_factory(store=store))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await events_pb2_grpc.EventServiceStub(refused.channel).PublishEvent(request)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
    seen = (await client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=task.task_id))).task
    assert seen.status == S.TASK_STATUS_RUNNING

    reply = await events_pb2_grpc.EventServiceStub(client.channel).PublishEvent(request)
    assert list(reply.cancelled) == [task.task_id]
    done = await wait_done(client, task.task_id)
    assert done.status == S.TASK_STATUS_CANCELLED and done.error.message.startswith("CANCEL_ON: event")
