"""The fair queue and concurrency keys, on both stores, against the testkit plugin process: a
tenant's backlog does not hold back another tenant, a key's cap holds across replicas, and a
key's strategy cancels the newest or the running task."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import grpc
import pytest

from mcp_sdk.proto import task_pb2, task_pb2_grpc, workflow_pb2, workflow_pb2_grpc
from mcp_server.auth import hash_token
from mcp_server.settings import Limits
from tests.conftest import client_for
from tests.helpers import (
    create,
    error_reason,
    plugin_stats,
    submit,
    until_plugin_called,
    violations,
    wait_done,
    workflow,
)

pytestmark = pytest.mark.asyncio
S = task_pb2.TaskStatus
TOKENS = {"big": "big-secret", "small": "small-secret", "writer": "writer-secret"}


def keyed_wf(workflow_id: str, **concurrency: Any) -> workflow_pb2.Workflow:
    root = {"id": "k", "step": {"protocol": "keyed", "input": "{'key': input.k, 'ms': input.ms}"}}
    return workflow(workflow_id, root, **({"concurrency": concurrency} if concurrency else {}))


async def test_a_small_tenant_behind_a_large_backlog_starts_within_two_grants(server_factory, store_url, tmp_path):
    """One task in flight at a time: the big tenant queues 20, then the small one queues 1. Round
    robin across owners starts the small one's at the next grant or the one after; a FIFO would
    start it after all 20."""
    principals = [
        {"name": "big", "token_sha256": hash_token(TOKENS["big"]), "roles": []},
        {"name": "small", "token_sha256": hash_token(TOKENS["small"]), "roles": []},
        {"name": "writer", "token_sha256": hash_token(TOKENS["writer"]), "roles": ["author"]},
    ]
    path = tmp_path / "principals.json"
    path.write_text(json.dumps({"principals": principals}))
    running = await server_factory(store=store_url, auth_file=str(path), limits=Limits(max_tasks_in_flight=1))
    async with grpc.aio.insecure_channel(running.address) as channel:
        tasks = task_pb2_grpc.TaskServiceStub(channel)

        def who(name: str) -> list[tuple[str, str]]:
            return [("authorization", f"Bearer {TOKENS[name]}")]

        await workflow_pb2_grpc.WorkflowServiceStub(channel).CreateWorkflow(
            workflow_pb2.CreateWorkflowRequest(workflow=keyed_wf("fair-slow")), metadata=who("writer")
        )

        async def submit_as(name: str) -> str:
            request = task_pb2.SubmitTaskRequest(workflow_id="fair-slow")
            request.input_data.update({"k": name, "ms": 60})
            return (await tasks.SubmitTask(request, metadata=who(name))).task.task_id

        backlog = [await submit_as("big") for _ in range(20)]
        small = await submit_as("small")

        async def finished(task_id: str, name: str) -> task_pb2.Task:
            while True:
                task = (await tasks.GetTask(task_pb2.GetTaskRequest(task_id=task_id), metadata=who(name))).task
                if task.status in (S.TASK_STATUS_COMPLETED, S.TASK_STATUS_FAILED):
                    assert task.status == S.TASK_STATUS_COMPLETED, task.error
                    return task
                await asyncio.sleep(0.05)

        async with asyncio.timeout(60):
            small_task = await finished(small, "small")
            big_starts = [(await finished(t, "big")).start_time.ToMicroseconds() for t in backlog]
    small_submitted, small_start = small_task.create_time.ToMicroseconds(), small_task.start_time.ToMicroseconds()
    # the backlog was still there when the small tenant submitted (on a loaded machine the 20
    # submissions take a while, and the first of them run meanwhile)
    behind = sum(1 for s in big_starts if s > small_start)
    assert behind >= 10, f"only {behind} of the big tenant's tasks were left: the test shows nothing"
    # grants are in start order; those the big tenant got after the small one's submission and
    # before its start: at most one already being granted and one more
    ahead = sum(1 for s in big_starts if small_submitted <= s < small_start)
    assert ahead <= 2, f"the small tenant's task started after {ahead} of the big tenant's"


async def test_a_concurrency_key_caps_its_running_tasks_and_every_key_progresses(server_factory, store_url, testkit):
    running = await server_factory(store=store_url)
    client = client_for(running)
    await create(client, keyed_wf("capped", key="input.k", max_running=2))
    tag = uuid.uuid4().hex[:8]
    a, b = f"a-{tag}", f"b-{tag}"
    submitted = [await submit(client, "capped", {"k": key, "ms": 120}) for key in [a] * 8 + [b] * 8]
    assert {t.concurrency_key for t in submitted} == {a, b}
    done = await asyncio.gather(*(wait_done(client, t.task_id, timeout=60) for t in submitted))
    assert all(t.status == S.TASK_STATUS_COMPLETED for t in done)
    most = (await plugin_stats(testkit))["keyed_max"]
    assert most[a] == 2 and most[b] == 2, most
    # round robin across key values: b's first task does not wait for a's eight
    first_b = min(t.end_time.ToMicroseconds() for t in done[8:])
    last_a = max(t.end_time.ToMicroseconds() for t in done[:8])
    assert first_b < last_a
    await client.channel.close()


async def test_a_cap_holds_across_two_replicas(server_factory, redis_url, testkit):
    replicas = [await server_factory(store=redis_url) for _ in range(2)]
    clients = [client_for(r) for r in replicas]
    await create(clients[0], keyed_wf("capped-2", key="'tenant-' + input.k", max_running=2))
    tag = uuid.uuid4().hex[:8]
    keys = [f"x{tag}", f"y{tag}"]
    submitted = [
        (i % 2, await submit(clients[i % 2], "capped-2", {"k": keys[i % 4 // 2], "ms": 150})) for i in range(16)
    ]
    done = await asyncio.gather(*(wait_done(clients[i], t.task_id, timeout=60) for i, t in submitted))
    assert all(t.status == S.TASK_STATUS_COMPLETED for t in done)
    most = (await plugin_stats(testkit))["keyed_max"]
    assert most[keys[0]] == 2 and most[keys[1]] == 2, most
    for client in clients:
        await client.channel.close()


async def test_cancel_in_progress_replaces_the_running_task_of_its_key(server_factory, store_url, testkit):
    running = await server_factory(store=store_url)
    client = client_for(running)
    await create(
        client,
        keyed_wf("latest-wins", key="input.k", max_running=1, strategy="CONCURRENCY_STRATEGY_CANCEL_IN_PROGRESS"),
    )
    key = uuid.uuid4().hex
    first = await submit(client, "latest-wins", {"k": key, "ms": 20_000})
    await until_plugin_called(testkit, first.task_id)
    second = await submit(client, "latest-wins", {"k": key, "ms": 50})
    ended = await wait_done(client, first.task_id, timeout=20)
    assert ended.status == S.TASK_STATUS_CANCELLED
    assert "CONCURRENCY_LIMIT" in ended.error.message and second.task_id in ended.error.message
    assert (await wait_done(client, second.task_id, timeout=20)).status == S.TASK_STATUS_COMPLETED
    await client.channel.close()


async def test_cancel_newest_ends_a_new_task_of_a_full_key_at_once(server_factory, store_url, testkit):
    running = await server_factory(store=store_url)
    client = client_for(running)
    await create(
        client, keyed_wf("first-wins", key="input.k", max_running=1, strategy="CONCURRENCY_STRATEGY_CANCEL_NEWEST")
    )
    key = uuid.uuid4().hex
    first = await submit(client, "first-wins", {"k": key, "ms": 800})
    await until_plugin_called(testkit, first.task_id)
    refused = await submit(client, "first-wins", {"k": key, "ms": 10})
    assert refused.status == S.TASK_STATUS_CANCELLED and "CONCURRENCY_LIMIT" in refused.error.message
    other_key = await submit(client, "first-wins", {"k": key + "-other", "ms": 10})
    assert (await wait_done(client, other_key.task_id)).status == S.TASK_STATUS_COMPLETED
    assert (await wait_done(client, first.task_id)).status == S.TASK_STATUS_COMPLETED
    # the key is free again: the next task runs
    again = await submit(client, "first-wins", {"k": key, "ms": 10})
    assert (await wait_done(client, again.task_id)).status == S.TASK_STATUS_COMPLETED
    await client.channel.close()


async def test_bad_concurrency_settings_are_refused_with_the_field(server_factory):
    running = await server_factory()
    client = client_for(running)
    cases = [
        ({"key": "input.("}, "workflow.concurrency.key"),
        ({"key": "steps.a.output"}, "workflow.concurrency.key"),
        ({"max_running": -1}, "workflow.concurrency.max_running"),
        ({"strategy": "CONCURRENCY_STRATEGY_CANCEL_NEWEST"}, "workflow.concurrency.strategy"),
    ]
    for concurrency, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await create(client, keyed_wf("bad-concurrency", **concurrency))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in violations(err.value), violations(err.value)
    await create(client, keyed_wf("key-needs-field", key="input.missing.deeper", max_running=1))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await submit(client, "key-needs-field", {"k": "x", "ms": 1})
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_reason(err.value) == "BAD_CONCURRENCY_KEY" and "input_data" in violations(err.value)
    await client.channel.close()
