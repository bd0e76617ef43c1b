"""DeleteTask, on both stores, through the public contract: a finished task goes with everything
stored of it, one not finished is refused and keeps running, its request_id makes a new task
afterwards, and no watcher (on this replica or another) is shown the old task's events."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from typing import Any

import grpc
import pytest
import redis

from mcp_sdk.proto import task_pb2
from mcp_server.settings import Limits
from tests.conftest import client_for
from tests.helpers import create, error_reason, events, result, step, submit, violations, wait_done, workflow

pytestmark = pytest.mark.asyncio
S = task_pb2.TaskStatus
INLINE = 1024


@pytest.fixture
async def served(server_factory, store_url):
    running = await server_factory(store=store_url, limits=Limits(inline_value_bytes=INLINE))
    client = client_for(running)
    yield running, client
    await client.channel.close()


async def delete(client: Any, task_id: str, allow_missing: bool = False) -> bool:
    request = task_pb2.DeleteTaskRequest(task_id=task_id, allow_missing=allow_missing)
    return (await client.tasks.DeleteTask(request)).deleted


async def refusal(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value


async def read_value(client: Any, task_id: str, step_path: str) -> bytes:
    request = task_pb2.ReadValueRequest(task_id=task_id, step_path=step_path)
    return b"".join([chunk.data async for chunk in client.tasks.ReadValue(request)])


async def test_a_finished_task_is_gone_from_every_read_and_a_second_delete_is_not_found(served):
    _, client = served
    await create(client, workflow("big", step("s", "sized", "{'bytes': 5000, 'tag': 'x'}")))
    gone = await wait_done(client, (await submit(client, "big")).task_id)
    kept = await wait_done(client, (await submit(client, "big")).task_id)
    assert gone.status == S.TASK_STATUS_COMPLETED and gone.result_ref.size_bytes == 5000

    assert await delete(client, gone.task_id) is True

    task_id = gone.task_id
    for call in (
        client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=task_id)),
        client.tasks.ListTaskSteps(task_pb2.ListTaskStepsRequest(task_id=task_id)),
        client.tasks.RerunTask(task_pb2.RerunTaskRequest(task_id=task_id)),
        client.tasks.DeleteTask(task_pb2.DeleteTaskRequest(task_id=task_id)),
        read_value(client, task_id, "s"),
        events(client, task_id),
    ):
        err = await refusal(call)
        assert err.code() == grpc.StatusCode.NOT_FOUND and error_reason(err) == "TASK_NOT_FOUND", err
    listed = await client.tasks.ListTasks(task_pb2.ListTasksRequest(workflow_id="big"))
    assert [t.task_id for t in listed.tasks] == [kept.task_id] and listed.total_size == 1
    assert len(await read_value(client, kept.task_id, "s")) == 5000  # the same value, the other task's copy
    assert await delete(client, task_id, allow_missing=True) is False
    removed = served[0].orchestrator.metrics.tasks_removed
    assert removed.labels("deleted")._value.get() == 1 and removed.labels("retention")._value.get() == 0


async def test_a_task_not_finished_is_refused_and_runs_on_to_its_end(served):
    _, client = served
    await create(client, workflow("slow", step("s", "sleep", "{'ms': 1500}")))
    task = await submit(client, "slow")
    await asyncio.sleep(0.3)

    err = await refusal(client.tasks.DeleteTask(task_pb2.DeleteTaskRequest(task_id=task.task_id)))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and error_reason(err) == "TASK_NOT_FINISHED"
    assert "cancel it first" in err.details() and task.task_id in err.details()

    done = await wait_done(client, task.task_id)
    assert done.status == S.TASK_STATUS_COMPLETED
    assert [e.type for e in await events(client, task.task_id)][-1] == task_pb2.TASK_EVENT_TYPE_COMPLETED
    assert await delete(client, task.task_id) is True


async def test_a_waiting_task_is_refused_and_a_cancelled_one_is_deleted(served):
    _, client = served
    await create(client, workflow("waits", {"id": "w", "wait": {"signal": "go"}}))
    task = await submit(client, "waits")
    for _ in range(100):
        if (
            await client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=task.task_id))
        ).task.status == S.TASK_STATUS_WAITING:
            break
        await asyncio.sleep(0.05)
    err = await refusal(client.tasks.DeleteTask(task_pb2.DeleteTaskRequest(task_id=task.task_id)))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "is waiting" in err.details()

    await client.tasks.CancelTask(task_pb2.CancelTaskRequest(task_id=task.task_id))
    assert await delete(client, task.task_id) is True
    err = await refusal(client.tasks.SignalTask(task_pb2.SignalTaskRequest(task_id=task.task_id, signal="go")))
    assert err.code() == grpc.StatusCode.NOT_FOUND


async def test_bad_requests_name_the_field(served):
    _, client = served
    for task_id, why in (("", "is required"), ("a/b", "must match"), ("x" * 65, "at most 64")):
        err = await refusal(client.tasks.DeleteTask(task_pb2.DeleteTaskRequest(task_id=task_id)))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert why in violations(err)["task_id"], violations(err)


async def submit_and_watch(client: Any, request_id: str, text: str) -> tuple[task_pb2.Task, list[task_pb2.TaskEvent]]:
    request = task_pb2.SubmitTaskRequest(workflow_id="appends", request_id=request_id)
    request.input_data.update({"text": text})
    submitted, seen = None, []
    async for reply in client.tasks.SubmitAndWatchTask(request):
        submitted = submitted or reply.submitted.task
        seen.extend(reply.events)
    assert submitted is not None
    return submitted, seen


async def test_the_request_id_of_a_deleted_task_makes_a_new_task_with_its_own_events(served):
    _, client = served
    await create(client, workflow("appends", step("a", "append", "{'text': input.text, 'suffix': '!'}")))
    first, _ = await submit_and_watch(client, "same", "one")
    assert result(await wait_done(client, first.task_id))["text"] == "one!"
    assert await delete(client, first.task_id) is True

    second, second_events = await submit_and_watch(client, "same", "two")  # the same id: made again
    assert second.task_id == first.task_id
    assert [e.sequence for e in second_events] == list(range(1, len(second_events) + 1))
    assert all(e.time.ToNanoseconds() >= second.create_time.ToNanoseconds() for e in second_events)
    assert result(await wait_done(client, second.task_id))["text"] == "two!"
    watched = await events(client, second.task_id)
    assert [e.time for e in watched] == [e.time for e in second_events]


async def test_on_redis_a_replica_that_watched_the_deleted_task_shows_only_the_new_one(server_factory, redis_url):
    """Replica B followed the first task's log (it stays in B's memory a while after its watcher
    ends); A deletes the task and makes it again from the same request_id: a watch on B must show
    the new task's events, not what B held of the old one; so must B's own SubmitAndWatchTask
    when B is the one that makes it again."""
    a = client_for(await server_factory(store=redis_url))
    b = client_for(await server_factory(store=redis_url))
    try:
        await create(a, workflow("appends", step("a", "append", "{'text': input.text, 'suffix': '!'}")))
        first, _ = await submit_and_watch(a, "again", "one")
        old = await events(b, first.task_id)
        assert old[-1].type == task_pb2.TASK_EVENT_TYPE_COMPLETED
        assert await delete(a, first.task_id) is True
        second, _ = await submit_and_watch(a, "again", "two")
        assert second.task_id == first.task_id
        seen = await events(b, second.task_id)
        assert all(e.time.ToNanoseconds() >= second.create_time.ToNanoseconds() for e in seen)
        assert seen[-1].type == task_pb2.TASK_EVENT_TYPE_COMPLETED
        assert result(await wait_done(b, second.task_id))["text"] == "two!"

        # B holds the second task's log now; A deletes it, and B itself makes the task again
        assert await delete(a, second.task_id) is True
        third, third_events = await submit_and_watch(b, "again", "three")
        assert third.task_id == first.task_id
        assert all(e.time.ToNanoseconds() >= third.create_time.ToNanoseconds() for e in third_events)
        assert third_events[-1].type == task_pb2.TASK_EVENT_TYPE_COMPLETED
        assert result(await wait_done(a, third.task_id))["text"] == "three!"
    finally:
        await a.channel.close()
        await b.channel.close()


async def test_a_rerun_keeps_what_it_shares_with_a_deleted_original(served, testkit):
    _, client = served
    wf = {
        "id": "root",
        "sequence": {"children": [step("big", "sized", "{'bytes': 5000, 'tag': 'b'}"), step("last", "echo")]},
    }
    await create(client, workflow("large", wf))
    original = await wait_done(client, (await submit(client, "large")).task_id)
    reply = await client.tasks.RerunTask(
        task_pb2.RerunTaskRequest(task_id=original.task_id, from_step_path="root/last")
    )
    rerun = await wait_done(client, reply.task.task_id)
    assert rerun.status == S.TASK_STATUS_COMPLETED

    assert await delete(client, original.task_id) is True
    assert len(await read_value(client, rerun.task_id, "root/big")) == 5000
    got = (await client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=rerun.task_id))).task
    assert got.rerun_of == original.task_id
    assert await delete(client, rerun.task_id) is True


def redis_traces(store_url: str, ids: set[str], cache: bool) -> list[str]:
    """Where any of `ids` still appears under the store's key prefix: in a key's name, a member,
    a field or a value (the step cache too if `cache`: the purge leaves it to its ttl)."""
    base, _, prefix = store_url.partition("?prefix=")
    client = redis.Redis.from_url(base)
    found = []
    try:
        for raw in client.scan_iter(f"{prefix}*", count=1000):
            key = raw.decode()
            if key.startswith(f"{prefix}sc:") and not cache:
                continue
            kind = client.type(raw).decode()
            parts: list[bytes] = [raw]
            if kind == "string":
                parts.append(client.get(raw) or b"")
            elif kind == "hash":
                parts += [b for pair in client.hgetall(raw).items() for b in pair]
            elif kind == "zset":
                parts += client.zrange(raw, 0, -1)
            elif kind == "set":
                parts += list(client.smembers(raw))
            elif kind == "list":
                parts += client.lrange(raw, 0, -1)
            elif kind == "stream":
                parts += [b for _, fields in client.xrange(raw) for pair in fields.items() for b in pair]
            found += [f"{kind} {key}" for task_id in ids if any(task_id.encode() in part for part in parts)]
    finally:
        client.close()
    return found


async def sqlite_traces(running: Any, ids: set[str], cache: bool) -> list[str]:
    """Where any of `ids` still appears in the embedded store: any column of any row of any table
    (the step cache only if `cache`, as on Redis)."""

    def scan(db: sqlite3.Connection) -> list[str]:
        found = []
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            if table == "sqlite_sequence" or (table == "step_cache" and not cache):
                continue
            for row in db.execute(f"SELECT * FROM {table}"):
                for column in row:
                    data = column.encode() if isinstance(column, str) else column if isinstance(column, bytes) else b""
                    found += [f"{table}: {task_id}" for task_id in ids if task_id.encode() in data]
        return found

    return list(await running.orchestrator.store.connection.run(scan))


@pytest.mark.parametrize("removal", ["DeleteTask", "retention"])
async def test_nothing_of_a_removed_task_is_left_in_the_store_whatever_it_went_through(
    server_factory, store_url, removal
):
    """Tasks of every shape (large values, a signal taken by a wait, cancelled while waiting,
    failed, a rerun sharing values, a concurrency key, a cached output, labels and their
    indexes), deleted or purged at the
    end of their retention: no key, member, field, value or row of the store names them afterwards
    (scanned whole; the step cache too after DeleteTask, while the purge leaves it to its ttl).
    Before, a capped group's sets kept a finished task's id until the group was read."""
    retention = 2.0 if removal == "retention" else 3600.0
    running = await server_factory(store=store_url, retention_seconds=retention)
    client = client_for(running)
    await create(client, workflow("big", step("s", "sized", "{'bytes': 5000, 'tag': 'x'}")))
    await create(client, workflow("asks", {"id": "w", "wait": {"signal": "go"}}))
    await create(client, workflow("fails", step("f", "fail", "{'code': 'INVALID_ARGUMENT'}")))
    keyed = workflow("keyed", step("s", "echo"), concurrency={"key": "input.who", "max_running": 1})
    await create(client, keyed)
    await create(client, workflow("kept", step("s", "echo", cache={"ttl": "600s"})))

    labels = {"order": "A-1", "env": "test"}
    big = await wait_done(client, (await submit(client, "big", request_id="r-big", labels=labels)).task_id)
    answered = await submit(client, "asks", labels={"order": "A-1"})
    stranded = await submit(client, "asks")
    for task in (answered, stranded):
        while (await client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=task.task_id))).task.status != (
            S.TASK_STATUS_WAITING
        ):
            await asyncio.sleep(0.05)
    signal = task_pb2.SignalTaskRequest(task_id=answered.task_id, signal="go", request_id="sig-1")
    signal.payload.string_value = "yes"
    await client.tasks.SignalTask(signal)
    await client.tasks.CancelTask(task_pb2.CancelTaskRequest(task_id=stranded.task_id))
    failed = await wait_done(client, (await submit(client, "fails")).task_id)
    assert failed.status == S.TASK_STATUS_FAILED
    rerun = await client.tasks.RerunTask(task_pb2.RerunTaskRequest(task_id=big.task_id))
    grouped = await submit(client, "keyed", {"who": "ann"})
    cached = await submit(client, "kept", {"n": removal})
    tasks = [big.task_id, answered.task_id, stranded.task_id, failed.task_id, rerun.task.task_id, grouped.task_id]
    tasks.append(cached.task_id)
    for task_id in tasks:
        await wait_done(client, task_id)

    traces_before = await traces(running, store_url, set(tasks))
    assert len(traces_before) > 20, traces_before  # the scan sees them while they exist
    if removal == "DeleteTask":
        for task_id in tasks:
            assert await delete(client, task_id) is True
    else:
        await asyncio.sleep(retention + 0.5)
        await running.orchestrator.store.tasks.purge_finished()  # (the replica's own purge may come first)
        for task_id in tasks:
            err = await refusal(client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=task_id)))
            assert err.code() == grpc.StatusCode.NOT_FOUND
    assert await traces(running, store_url, set(tasks), cache=removal == "DeleteTask") == []
    await client.channel.close()


async def traces(running: Any, store_url: str, ids: set[str], cache: bool = True) -> list[str]:
    if store_url.startswith("redis"):
        return await asyncio.to_thread(redis_traces, store_url, ids, cache)
    return await sqlite_traces(running, ids, cache)


async def test_the_replica_s_own_purge_removes_tasks_past_their_retention_and_counts_them(server_factory, store_url):
    running = await server_factory(store=store_url, retention_seconds=0.5, lease_seconds=0.3)  # a purge a second
    client = client_for(running)
    await create(client, workflow("quick", step("s", "echo")))
    done = [await wait_done(client, (await submit(client, "quick")).task_id) for _ in range(3)]
    removed = running.orchestrator.metrics.tasks_removed.labels("retention")
    async with asyncio.timeout(10):
        while removed._value.get() < 3:
            await asyncio.sleep(0.1)
    for task in done:
        err = await refusal(client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=task.task_id)))
        assert err.code() == grpc.StatusCode.NOT_FOUND
    assert removed._value.get() == 3
    await client.channel.close()


async def test_a_replica_started_with_a_lower_retention_purges_tasks_that_ended_under_the_longer_one(
    server_factory, store_url, tmp_path
):
    """A store full of week-old tasks: an operator lowers MCP_RETENTION_SECONDS and restarts; the
    tasks that ended under the week go at the next purge, on both stores (on Redis their purge time
    was fixed when they ended)."""
    store = store_url if not store_url.startswith("sqlite") else f"sqlite:///{tmp_path}/kept.db"
    running = await server_factory(store=store, retention_seconds=7 * 24 * 3600)
    client = client_for(running)
    await create(client, workflow("kept", step("s", "echo")))
    done = [await wait_done(client, (await submit(client, "kept")).task_id) for _ in range(3)]
    await client.channel.close()
    await running.stop(0.5)
    running = await server_factory(store=store, retention_seconds=0.5, lease_seconds=0.3)  # a purge a second
    client = client_for(running)
    async with asyncio.timeout(10):
        for task in done:
            while True:
                try:
                    await client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=task.task_id))
                except grpc.aio.AioRpcError as err:
                    assert err.code() == grpc.StatusCode.NOT_FOUND
                    break
                await asyncio.sleep(0.1)
    await client.channel.close()


async def test_a_deleted_task_s_cached_outputs_go_with_it(served):
    """The step cache holds what a task's steps produced (an LLM's answer about its input, say):
    deleting the task removes the outputs it stored, so no later task is served them; outputs
    another task stored stay."""
    _, client = served
    wf = workflow("cached", step("s", "append", "{'text': input.text}", cache={"ttl": "600s"}))
    await create(client, wf)

    async def cached_step(text: str) -> tuple[str, task_pb2.StepState]:
        task = await wait_done(client, (await submit(client, "cached", {"text": text})).task_id)
        assert task.status == S.TASK_STATUS_COMPLETED, task.error
        return task.task_id, next(s for s in task.steps if s.path == "s")

    first, made = await cached_step("private")
    second, hit = await cached_step("private")
    assert not made.cached and hit.cached and hit.cached_from == first
    assert await delete(client, first) is True
    third, again = await cached_step("private")
    assert not again.cached  # the deleted task's output is gone: called again, and stored by this task
    assert await delete(client, second) is True  # it stored nothing: the third task's output stays
    _, served_from = await cached_step("private")
    assert served_from.cached and served_from.cached_from == third


def holds_copy(running: Any, task_id: str) -> bool:
    """Whether the replica keeps, in memory, a copy of an output `task_id` stored in the cache."""
    near = running.orchestrator.step_cache
    return any(entry.task_id == task_id for _, entry in near._entries.values())


@pytest.mark.parametrize("redis_kind", ["redis_url", "cluster_url"])
async def test_every_replica_drops_its_copies_of_a_deleted_task_s_cached_outputs_at_once(
    server_factory, request, redis_kind
):
    """Two replicas on one Redis (a node, a cluster), both holding a copy of the output a task
    stored (each replica keeps the entries it read or wrote for up to a minute, to hit without a
    round trip): deleting the task through one tells the other (pub/sub), and no later task, on
    either, is served it."""
    store = request.getfixturevalue(redis_kind)
    first, second = await server_factory(store=store), await server_factory(store=store)
    clients = [client_for(first), client_for(second)]
    wf = workflow("cached-twice", step("s", "append", "{'text': input.text}", cache={"ttl": "600s"}))
    await create(clients[0], wf)

    async def cached_step(client: Any) -> tuple[str, task_pb2.StepState]:
        task = await wait_done(client, (await submit(client, "cached-twice", {"text": "private"})).task_id)
        return task.task_id, next(s for s in task.steps if s.path == "s")

    stored_by, made = await cached_step(clients[0])
    assert not made.cached
    for client in clients:  # a replica runs what it is sent when it has room: each hits the entry
        assert (await cached_step(client))[1].cached_from == stored_by
    assert holds_copy(first, stored_by) and holds_copy(second, stored_by)
    assert await delete(clients[1], stored_by) is True
    assert not holds_copy(second, stored_by)
    async with asyncio.timeout(10):  # as the word reaches the other replica (a copy would otherwise live a minute)
        while holds_copy(first, stored_by):
            await asyncio.sleep(0.02)
    _, again = await cached_step(clients[0])
    assert not again.cached  # computed anew, on the replica that did not delete it
    for client in clients:
        await client.channel.close()


async def test_a_redis_user_that_may_not_publish_still_deletes_a_task_with_cached_outputs(server_factory, redis_url):
    """Telling the other replicas is best-effort: with pub/sub denied, the delete goes through and
    the outputs are gone from the store (other replicas' copies then expire within a minute)."""
    user = f"nopub{uuid.uuid4().hex[:8]}"
    admin = redis.Redis.from_url(redis_url.split("?")[0])
    admin.acl_setuser(user, enabled=True, passwords=["+pw"], keys=["*"], channels=["*"], commands=["+@all", "-@pubsub"])
    try:
        scheme, rest = redis_url.split("://", 1)
        client = client_for(await server_factory(store=f"{scheme}://{user}:pw@{rest}"))
        await create(client, workflow("cached-quietly", step("s", "append", "{'text': 'x'}", cache={"ttl": "600s"})))
        stored = await wait_done(client, (await submit(client, "cached-quietly")).task_id)
        assert await delete(client, stored.task_id) is True
        again = await wait_done(client, (await submit(client, "cached-quietly")).task_id)
        assert not again.steps[0].cached
        await client.channel.close()
    finally:
        admin.acl_deluser(user)
        admin.close()
