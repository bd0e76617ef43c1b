"""A replica cut off from Redis while the others go on: it stops its runs before their leases run
out (their calls with them), so a step is never called on two replicas at once, and while its
writes go unanswered it does not run on ahead of what is stored."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from mcp_sdk.proto import task_pb2
from mcp_server.errors import LeaseLost
from tests.conftest import client_for
from tests.contract.conftest import new_task
from tests.helpers import create, plugin_stats, step, submit, wait_done, workflow
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.asyncio
S = task_pb2.TaskStatus


@pytest.fixture
async def proxied(redis_url: str) -> AsyncIterator[tuple[TcpProxy, str]]:
    """A TCP proxy to the test Redis, and a store URL through it."""
    base, query = redis_url.split("?", 1)
    scheme, rest = base.split("://", 1)
    host_port, database = rest.split("/", 1)
    proxy = await TcpProxy(host_port).start()
    try:
        yield proxy, f"{scheme}://{proxy.address}/{database}?{query}"
    finally:
        proxy.mend()
        await proxy.stop()


@pytest.mark.parametrize("how", ["cut", "blackhole"])
async def test_a_replica_cut_off_from_redis_stops_its_runs_before_their_leases_run_out(
    server_factory, redis_url, testkit, proxied, how
):
    """A replica whose path to Redis is cut (refused at once) or silently dead (its renewals never
    answered, never failed, on every connection, new ones too) cannot renew its leases. Before
    they run out (the store then lets another replica take the task over and call its step again)
    it stops its runs, their plugin calls with them: the task's step is never called twice at once,
    and the task completes on the other replica."""
    proxy, through_proxy = proxied
    options = {"lease_seconds": 1.5}
    cut_off = await server_factory(store=through_proxy, **options)
    client = client_for(cut_off)
    key = f"once:{uuid.uuid4().hex[:8]}"
    await create(client, workflow("held", step("hold", "keyed", f"{{'key': '{key}', 'ms': 3000}}")))
    task = await submit(client, "held")
    async with asyncio.timeout(10):  # its call is under way on the replica about to be cut off
        while not (await client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=task.task_id))).task.steps:
            await asyncio.sleep(0.02)

    getattr(proxy, how)()  # early in the call (a replica started first would take its share of the work)
    other = client_for(await server_factory(store=redis_url, **options))
    done = await wait_done(other, task.task_id, timeout=20)
    assert done.status == S.TASK_STATUS_COMPLETED
    assert (await plugin_stats(testkit))["keyed_max"][key] == 1
    stopped = cut_off.orchestrator.metrics.registry.get_sample_value
    assert stopped("mcp_runs_stopped_total", {"reason": "lease_unrenewed"}) >= 1  # what an operator sees


async def test_a_renewal_stuck_on_a_dead_connection_stops_no_run_when_the_next_one_goes_through(
    server_factory, redis_url, testkit, proxied
):
    """The connections open to Redis go silent (their peer gone, the path there alive: new ones
    answer), several of them idle in the pool, while a step's call is under way. A renewal that
    goes out on one waits for the socket timeout (5 s), past what the lease watch allows (1 s
    here); a sixth of a lease on, its round asks again beside it on fresh connections and renews
    the lease: the run is not stopped and its step is called once. (With one ask per round, the
    next round, a third of a lease on, came too late: the watch stopped the run, and the other
    replica called the step again.)"""
    proxy, through_proxy = proxied
    replica = await server_factory(store=through_proxy, lease_seconds=1.5)
    client = client_for(replica)
    key = f"once:{uuid.uuid4().hex[:8]}"
    await create(client, workflow("held", step("hold", "keyed", f"{{'key': '{key}', 'ms': 4000}}")))
    pool = replica.orchestrator.store.connection.r
    await asyncio.gather(*(pool.ping() for _ in range(16)))  # idle connections, about to go silent too
    task = await submit(client, "held")
    async with asyncio.timeout(10):  # its call has begun: the freeze comes early in it
        while not (await client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=task.task_id))).task.steps:
            await asyncio.sleep(0.02)

    assert proxy.freeze() >= 16
    other = client_for(await server_factory(store=redis_url, lease_seconds=1.5))  # to take over a stopped run
    done = await wait_done(other, task.task_id, timeout=30)
    assert done.status == S.TASK_STATUS_COMPLETED
    calls = {k: n for k, n in (await plugin_stats(testkit))["calls"].items() if k.startswith(task.task_id)}
    assert list(calls.values()) == [1], calls
    stopped = replica.orchestrator.metrics.registry.get_sample_value
    assert stopped("mcp_runs_stopped_total", {"reason": "lease_unrenewed"}) is None


async def test_a_run_whose_lease_went_unrenewed_starts_no_further_node(server_factory, store_url, testkit):
    """A replica that wakes from a pause (a frozen VM, SIGSTOP) past its leases may come to a
    run's next node before its lease watch's turn. The run asks before each node whether its lease
    went unrenewed too long and stops there: the step under way when it went stale was called,
    the next one never is (another replica may be calling it by then)."""
    server = await server_factory(store=store_url)
    name = f"three-{uuid.uuid4().hex[:8]}"
    naps = [step(f"s{i}", "sleep", "{'ms': 300}") for i in range(1, 4)]
    await create(client_for(server), workflow(name, {"id": "seq", "sequence": {"children": naps}}))
    orchestrator = server.orchestrator
    task, event = new_task(name)
    task, _, token = await orchestrator.store.queue.create_leased(task, event, "paused-replica", 60)
    plan = await orchestrator.plans.get(name, 1)
    went_stale = time.monotonic() + 0.15  # while s1 sleeps: its replica paused then, say
    with pytest.raises(LeaseLost):
        await orchestrator.dispatcher.runner.resume_from(
            task, plan, token, lease_stale=lambda: time.monotonic() > went_stale
        )
    calls = {k: n for k, n in (await plugin_stats(testkit))["calls"].items() if k.startswith(task.task_id)}
    assert calls == {f"{task.task_id}/seq/s1/sleep": 1}, calls


async def test_a_replica_whose_writes_go_unanswered_does_not_run_on_ahead_of_them(
    server_factory, redis_url, testkit, proxied
):
    """Its path to Redis silently dead, a replica's checkpoint hangs: nothing refuses it until the
    socket times out (5 s). The run goes on to its next step only while the write under way is
    younger than a second: every step it runs past the last write that landed is called again by
    the replica that takes the task over, and a sequence of 100 ms steps would otherwise run some
    50 of them in those 5 s."""
    proxy, through_proxy = proxied
    options = {"lease_seconds": 9.0}  # the lease watch stops the run 6 s on: after the socket's timeout
    cut_off = client_for(await server_factory(store=through_proxy, **options))
    other = client_for(await server_factory(store=redis_url, **options))
    steps = [step(f"s{i}", "sleep", "{'ms': 100}") for i in range(60)]
    name = f"steady-{uuid.uuid4().hex[:8]}"
    await create(cut_off, workflow(name, {"id": "seq", "sequence": {"children": steps}}))
    task = await submit(cut_off, name)

    async def calls() -> dict[str, int]:
        return {k: n for k, n in (await plugin_stats(testkit))["calls"].items() if k.startswith(task.task_id)}

    async with asyncio.timeout(20):
        while len(await calls()) < 5:
            await asyncio.sleep(0.05)
    proxy.blackhole()
    done = await wait_done(other, task.task_id, timeout=60)
    assert done.status == S.TASK_STATUS_COMPLETED
    called = await calls()
    assert len(called) == 60
    called_again = sum(n - 1 for n in called.values())
    assert 1 <= called_again <= 20, called_again  # the ~10 of the last second (before: ~50)


async def test_a_replica_whose_store_answers_late_keeps_its_leases(server_factory, testkit, proxied):
    """Every reply from Redis 0.3 s late, a fifth of the 1.5 s lease (a 3 s stall at the default
    15 s): a claim then takes more than a sixth of a lease, a renewal a fifth. No run is stopped for
    its lease all the same: renewals go out a third of a lease apart from ask to ask, not a third
    after the last reply came back, and runs claimed slowly have their leases renewed at once."""
    proxy, through_proxy = proxied
    replica = await server_factory(store=through_proxy, lease_seconds=1.5)
    client = client_for(replica)
    await create(client, workflow("held-late", step("hold", "sleep", "{'ms': 2500}")))
    proxy.reply_delay = 0.3
    tasks = [await submit(client, "held-late") for _ in range(3)]
    for task in tasks:
        assert (await wait_done(client, task.task_id, timeout=30)).status == S.TASK_STATUS_COMPLETED
    calls = (await plugin_stats(testkit))["calls"]
    assert [sum(n for key, n in calls.items() if key.startswith(t.task_id)) for t in tasks] == [1, 1, 1]
    stopped = replica.orchestrator.metrics.registry.get_sample_value
    assert not stopped("mcp_runs_stopped_total", {"reason": "lease_unrenewed"})


async def test_runs_whose_claim_came_back_late_are_renewed_before_they_start(server_factory, testkit, monkeypatch):
    """A claim that comes back late (1.2 s, most of the 1.5 s lease counted from before it was
    asked: a store just back from an outage) would start runs the watch stops at once, after their
    first call, and again at every claim. Their leases are renewed first: the task runs once."""
    replica = await server_factory(lease_seconds=1.5, wait_in_memory_seconds=0.1)
    client = client_for(replica)
    queue = replica.orchestrator.dispatcher.queue
    claim = queue.claim_tasks

    async def claim_late(*args: object) -> object:
        claimed = await claim(*args)
        if claimed:
            await asyncio.sleep(1.2)
        return claimed

    monkeypatch.setattr(queue, "claim_tasks", claim_late)
    # parked first, so that its timer puts it back in the queue (a task submitted runs where it came)
    nap = {"id": "nap", "sleep": {"duration": "0.3s"}}
    hold = step("hold", "sleep", "{'ms': 1000}")
    await create(client, workflow("claimed-late", {"id": "root", "sequence": {"children": [nap, hold]}}))
    task = await submit(client, "claimed-late")
    assert (await wait_done(client, task.task_id, timeout=20)).status == S.TASK_STATUS_COMPLETED
    calls = (await plugin_stats(testkit))["calls"]
    assert sum(n for key, n in calls.items() if key.startswith(task.task_id)) == 1
    stopped = replica.orchestrator.metrics.registry.get_sample_value
    assert not stopped("mcp_runs_stopped_total", {"reason": "lease_unrenewed"})
