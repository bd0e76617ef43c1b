"""A rate limit put or deleted while calls wait for it applies to them at once, on both stores:
a call told to come back in 30 s under the old limit goes as soon as the new one lets it, whether
its task waits in memory or is parked, and whichever replica the change goes through (on Redis,
every replica hears of it)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from google.protobuf import duration_pb2

from mcp_sdk.proto import registry_pb2, task_pb2
from mcp_server.protocols.rate_limits import RateLimitGate
from mcp_server.state import open_store
from tests.conftest import client_for
from tests.helpers import create, parked, submit, wait_done, workflow
from tests.integration.test_rate_limits import limit_known, put_limit, until_waiting_or_done
from tests.integration.test_waits import other_replica

pytestmark = pytest.mark.asyncio
S = task_pb2.TaskStatus
OLD_TURN = 30.0  # seconds: one unit per this, under the limit the calls first wait for


async def second_waiting(client: Any, running: Any = None, template: bool = False) -> tuple[str, str]:
    """A limit of one call per 30 s (a template's, for each tenant, when `template`), used up; a
    second task whose call waits for it (parked once `running`, its server, has let it go). The
    limit's key and the second task's id."""
    name = uuid.uuid4().hex[:10]
    limit_key = f"quota-{name}:*" if template else f"quota:{name}"
    key = f"quota-{name}:acme" if template else limit_key
    await put_limit(client, limit_key, 1, OLD_TURN)
    step = {"protocol": "tick", "input": f"{{'tag': '{key}'}}", "rate_limits": [{"key": key}]}
    await create(client, workflow(f"limited-{name}", {"id": "call", "step": step}))
    first = await wait_done(client, (await submit(client, f"limited-{name}")).task_id)
    assert first.status == S.TASK_STATUS_COMPLETED
    second = await submit(client, f"limited-{name}")
    await until_waiting_or_done(client, second.task_id)
    if running is not None:
        await parked(client, second.task_id, running)
    return limit_key, second.task_id


@pytest.mark.parametrize(
    "parks,template", [(False, False), (True, False), (True, True)], ids=["in-memory", "parked", "parked-template"]
)
async def test_a_limit_raised_while_a_call_waits_lets_it_go_at_once(server_factory, store_url, parks, template):
    """`parked-template`: the call's key falls under a template (`quota-...:*`), raised as a whole."""
    running = await server_factory(store=store_url, wait_in_memory_seconds=0.1 if parks else 120)
    client = client_for(running)
    key, waiting = await second_waiting(client, running if parks else None, template)

    await put_limit(client, key, 100, 1)
    done = await wait_done(client, waiting, timeout=OLD_TURN / 3)  # not at the old turn, 30 s on
    assert done.status == S.TASK_STATUS_COMPLETED


async def test_a_limit_deleted_while_a_parked_call_waits_lets_it_go_at_once(server_factory, store_url):
    running = await server_factory(store=store_url, wait_in_memory_seconds=0.1)
    client = client_for(running)
    key, waiting = await second_waiting(client, running)

    await client.registry.DeleteRateLimit(registry_pb2.DeleteRateLimitRequest(key=key))
    done = await wait_done(client, waiting, timeout=OLD_TURN / 3)
    assert done.status == S.TASK_STATUS_COMPLETED


async def test_a_limit_raised_through_another_replica_wakes_the_calls_waiting_on_this_one(server_factory, redis_url):
    """On Redis, the replica the put goes through tells every other replica: the call waiting in
    memory on the first goes at once."""
    replicas = [await server_factory(store=redis_url, wait_in_memory_seconds=120) for _ in range(2)]
    clients = [client_for(replica) for replica in replicas]
    key, waiting = await second_waiting(clients[0])
    other = await other_replica(clients, replicas, waiting)

    await put_limit(other, key, 100, 1)
    done = await wait_done(clients[0], waiting, timeout=OLD_TURN / 3)
    assert done.status == S.TASK_STATUS_COMPLETED


@pytest.mark.parametrize(
    "store,replicas,parks",
    [("sqlite", 1, False), ("redis", 1, False), ("redis", 2, False), ("sqlite", 1, True), ("redis", 2, True)],
    ids=["sqlite", "redis", "redis-other-replica", "sqlite-parked", "redis-parked"],
)
async def test_calls_that_leave_the_line_let_those_behind_them_go_sooner(
    server_factory, request, store, replicas, parks
):
    """A limit of 1 call per 6 s, used; three calls wait in line (their turns 6, 12 and 18 s on) and
    a fourth behind them (24 s on). The three tasks are cancelled: the call behind them asks again
    and goes at the next unit, within seconds, not at the turn it was told. With two replicas
    (Redis), the call behind waits on the other one, which hears of the leaves through the store.
    Parked (the waits longer than MCP_WAIT_IN_MEMORY_SECONDS), the call behind is made due by the
    leaves (before, it slept to its turn)."""
    store_url = "sqlite://:memory:" if store == "sqlite" else request.getfixturevalue("redis_url")
    in_memory = 0.1 if parks else 120
    servers = [await server_factory(store=store_url, wait_in_memory_seconds=in_memory) for _ in range(replicas)]
    clients = [client_for(server) for server in servers]
    key = f"quota:{uuid.uuid4().hex[:10]}"
    await put_limit(clients[0], key, 1, 6)
    await limit_known(servers, key)
    step = {"protocol": "tick", "input": f"{{'tag': '{key}'}}", "rate_limits": [{"key": key}]}
    await create(clients[0], workflow("in-line", {"id": "call", "step": step}))
    used = await wait_done(clients[0], (await submit(clients[0], "in-line")).task_id)
    assert used.status == S.TASK_STATUS_COMPLETED
    ahead = []
    for _ in range(3):
        ahead.append(await submit(clients[0], "in-line"))
        await until_waiting_or_done(clients[0], ahead[-1].task_id)
    behind = await submit(clients[-1], "in-line")  # each runs on the replica it was submitted through
    await until_waiting_or_done(clients[0], behind.task_id)
    if parks:  # (only the call behind: the first ahead may have had its turn meanwhile)
        for server in servers:
            await parked(clients[0], behind.task_id, server)
    elif replicas == 2:
        assert await other_replica(clients, servers, ahead[0].task_id) is clients[1]
        assert await other_replica(clients, servers, behind.task_id) is clients[0]

    for task in ahead:
        await clients[0].tasks.CancelTask(task_pb2.CancelTaskRequest(task_id=task.task_id, reason="not wanted"))
    done = await wait_done(clients[0], behind.task_id, timeout=12)  # not at its turn, about 20 s from here
    assert done.status == S.TASK_STATUS_COMPLETED


async def test_a_limit_put_through_another_replica_applies_here_as_its_announcement_comes(redis_url):
    """A replica learns that a key has a limit from the announcement of its put through another
    one, not only at its next refresh of the keys (a second on): its calls take units at once.
    Here the replica never refreshes: the announcement alone must tell it."""
    stores = [await open_store(redis_url) for _ in range(2)]
    here, there = RateLimitGate(stores[0].rate_limits), RateLimitGate(stores[1].rate_limits)
    following = asyncio.create_task(here.follow_changes())
    try:
        key = f"heard:{uuid.uuid4().hex[:10]}"
        limit = registry_pb2.RateLimit(key=key, limit=1, period=duration_pb2.Duration(seconds=60))
        async with asyncio.timeout(10):
            while here.limit_key(key) is None:
                await there.put(limit)  # again until heard: the first may come before the subscription
                await asyncio.sleep(0.2)
        assert (await here.take_units([(key, 1)])).granted
        assert not (await here.take_units([(key, 1)])).granted  # the limit's one unit, taken through here
    finally:
        following.cancel()
        for store in stores:
            await store.close()
