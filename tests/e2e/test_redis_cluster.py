"""The state spread over a real Redis Cluster (six local nodes), orchestrators as real
processes: the keys land on every master; every task completes through a kill -9 of an
orchestrator and, separately, of a Redis master (with wait_replicas=1), with gapless logs, no
finished step run again, and watchers that follow their tasks through both."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mcp_sdk.proto import task_pb2
from mcp_server.engine.leases import LeaseKeeper
from mcp_server.errors import Unavailable
from mcp_server.state import open_store
from mcp_server.state.redis.layout import Layout
from tests.conftest import Client, client_for_address
from tests.contract.conftest import new_task
from tests.e2e.test_recovery import assert_gapless, assert_no_finished_step_ran_twice
from tests.e2e.test_server_process import free_port
from tests.helpers import create, plugin_stats, step, submit, workflow
from tests.integration.test_agents import long_conversation_reads_back
from tests.support.processes import replica_set
from tests.support.redis_cluster import LocalCluster, start_cluster
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.asyncio
E = task_pb2.TaskEventType
LAYOUT = Layout("failover:")
LAYOUT_OF_STUCK = Layout("stuck:")
CHAIN = workflow(
    "chain", {"id": "root", "sequence": {"children": [step(f"s{i}", "sleep", "{'ms': 150}") for i in range(1, 5)]}}
)
# runs that go on through a master's whole time away (the node timeout, then the failover)
LONG_CHAIN = workflow(
    "chain", {"id": "root", "sequence": {"children": [step(f"s{i}", "sleep", "{'ms': 500}") for i in range(1, 21)]}}
)


@pytest.fixture
def own_cluster() -> Any:
    """A cluster of its own, for a test that kills one of its masters."""
    cluster = start_cluster()
    yield cluster
    cluster.stop()


async def follow(client: Client, task_id: str) -> list[task_pb2.TaskEvent]:
    """Watch a task to its end, reconnecting after a dropped stream exactly where it stopped."""
    log: list[task_pb2.TaskEvent] = []
    for _ in range(50):
        try:
            after = log[-1].sequence if log else 0
            async for event in client.tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=task_id, after_sequence=after)):
                log.append(event)
            if log and log[-1].type in (
                E.TASK_EVENT_TYPE_COMPLETED,
                E.TASK_EVENT_TYPE_FAILED,
                E.TASK_EVENT_TYPE_CANCELLED,
            ):
                return log
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.UNAVAILABLE, err
            await asyncio.sleep(0.3)
    raise AssertionError(f"task {task_id} did not end")


def served_by(node: redis.Redis, key: str) -> bool:
    """Whether the slot of `key` is this node's (else it answers MOVED)."""
    try:
        node.exists(key)
        return True
    except redis.exceptions.MovedError:
        return False


def keys_per_master(cluster: LocalCluster, prefix: str) -> dict[int, int]:
    found = {}
    for port in cluster.masters():
        client = redis.Redis(port=port)
        found[port] = sum(1 for _ in client.scan_iter(f"{prefix}*", count=1000))
        client.close()
    return found


async def test_three_orchestrators_spread_300_tasks_over_every_master(plugins, testkit, redis_cluster, cluster_url):
    async with replica_set(3, cluster_url, [plugins["testkit"].address], "spread", MCP_LEASE_SECONDS="1.5") as (
        _,
        clients,
    ):
        await create(
            clients[0],
            workflow("quick", {"id": "root", "sequence": {"children": [step("a", "echo"), step("b", "echo")]}}),
        )
        tasks = await asyncio.gather(*(submit(clients[i % 3], "quick") for i in range(300)))
        logs = await asyncio.gather(*(follow(clients[i % 3], t.task_id) for i, t in enumerate(tasks)))
        assert all(log[-1].type == E.TASK_EVENT_TYPE_COMPLETED for log in logs)
        prefix = cluster_url.split("prefix=")[1]
        spread = keys_per_master(redis_cluster, prefix)
        assert len(spread) == 3 and all(count > 100 for count in spread.values()), spread
        listed = await clients[1].tasks.ListTasks(task_pb2.ListTasksRequest(page_size=1000))
        assert listed.total_size == 300 and len(listed.tasks) == 300


async def test_a_killed_orchestrator_s_tasks_finish_elsewhere_on_the_cluster(plugins, testkit, cluster_url):
    async with replica_set(3, cluster_url, [plugins["testkit"].address], "crash", MCP_LEASE_SECONDS="1.5") as (
        processes,
        clients,
    ):
        await create(clients[0], CHAIN)
        tasks = await asyncio.gather(*(submit(clients[i % 3], "chain") for i in range(30)))
        await asyncio.sleep(0.4)
        processes[1].send_signal(signal.SIGKILL)
        processes[1].wait(timeout=10)
        survivors = [clients[0], clients[2]]
        logs = await asyncio.wait_for(
            asyncio.gather(*(follow(survivors[i % 2], t.task_id) for i, t in enumerate(tasks))), 90
        )
        calls = (await plugin_stats(testkit))["calls"]
        for log in logs:
            assert_gapless(log)
            assert_no_finished_step_ran_twice(log, calls)
        assert any(e.type == E.TASK_EVENT_TYPE_RESUMED for log in logs for e in log), "the killed replica ran nothing"


async def test_a_master_away_holds_up_only_the_leases_and_claims_of_the_tasks_it_served(own_cluster):
    """A renewal answers master by master: the leases of the masters that answer are renewed
    (and said so) before the one away fails its own, or answers once its replica takes over. A
    claim meanwhile takes the queued tasks of the masters that answer."""
    store = await open_store(f"{own_cluster.url}?prefix=renew:")
    try:
        for _ in range(48):
            await store.queue.create_task(*new_task())
        leases = {}
        while (claim := await store.queue.claim_task("replica-a", 60)) is not None:
            leases[claim[0].task_id] = claim[1]
        made = [new_task() for _ in range(16)]
        for task, event in made:
            await store.queue.create_task(task, event)
        queued = [task for task, _ in made]
        victim = own_cluster.masters()[0]
        served = redis.Redis(port=victim)
        on_victim = {
            t for t in [*leases, *(t.task_id for t in queued)] if served_by(served, Layout("renew:").task(t).header)
        }
        served.close()
        assert len(leases) == 48 and 0 < len(on_victim & set(leases)) < 48
        async for _ in store.queue.renew_leases(leases, 60):
            pass  # as a replica does: its scripts are loaded on every master before one goes away
        answered: list[str] = []

        async def renew() -> None:
            with contextlib.suppress(Unavailable):
                async for reply in store.queue.renew_leases(leases, 60):
                    assert not reply.lost
                    answered.extend(reply.renewed)

        own_cluster.kill(victim)
        _, claimed = await asyncio.gather(renew(), store.queue.claim_tasks("replica-a", 60, 100))
        assert set(answered[: 48 - len(on_victim & set(leases))]) == set(leases) - on_victim, answered
        assert {t.task_id for t in queued} - on_victim <= {task.task_id for task, _ in claimed}
    finally:
        await store.close()


@dataclass
class HeldRun:
    """A run as the lease keeper sees it (the dispatcher's runs are these, with a step runner)."""

    lease_token: int
    lease_until: float
    task: asyncio.Task[None]
    stopped: bool = False


@pytest.fixture
def slow_to_fail_over() -> Any:
    """A cluster of its own that marks a master failed only after 5 s, time to see what calls do
    while it is silent and before every node refuses commands for the failover."""
    cluster = start_cluster(node_timeout_ms=5000)
    yield cluster
    cluster.stop()


async def test_a_silent_master_holds_up_only_the_leases_and_claims_of_the_tasks_it_served(slow_to_fail_over):
    """A master gone silent (SIGSTOP: a frozen host answers nothing and refuses nothing until the
    5 s socket timeout, then once more on the retry): a claim takes the others' queued tasks without
    waiting for it, so do the sweeps of due times and expired leases, and the lease keeper renews
    the others' leases at its cadence meanwhile (before, each waited 10 s for the silent master, and
    every run here was stopped). Through the failover that follows, every node refuses commands for
    a moment, and redis-py's refreshes of the topology that ask the silent node wait for it: no
    lease is renewed anywhere for up to 7 s then, within the default lease's 10 s."""
    store = await open_store(f"{slow_to_fail_over.url}?prefix=silent:")
    victim = slow_to_fail_over.masters()[0]
    loops: list[asyncio.Task[None]] = []
    try:
        runs: dict[str, HeldRun] = {}
        for _ in range(48):
            await store.queue.create_task(*new_task())
        while (claim := await store.queue.claim_task("replica-a", 15)) is not None:
            runs[claim[0].task_id] = HeldRun(claim[1], time.monotonic() + 15, asyncio.create_task(asyncio.sleep(60)))
        # as a replica does: its scripts are loaded on every master before one goes away (one that
        # lacks a script loads it alone: see the test after this one)
        await store.waits.release_due()
        await store.queue.release_expired_leases()
        dropped = [new_task() for _ in range(16)]  # leased by a replica that died: taken over
        for task, event in dropped:
            await store.queue.create_task(task, event)
        for _ in dropped:
            assert await store.queue.claim_task("replica-b", 0.2) is not None
        made = [new_task() for _ in range(16)]
        for task, event in made:
            await store.queue.create_task(task, event)
        expiring = [new_task() for _ in range(16)]  # past their queue deadlines: the sweep hands them out
        for task, event in expiring:
            task.queue_deadline.FromNanoseconds(time.time_ns() + 50_000_000)
            await store.queue.create_task(task, event)
        served = redis.Redis(port=victim)
        every = [*runs, *(t.task_id for t, _ in [*made, *expiring, *dropped])]
        on_victim = {t for t in every if served_by(served, Layout("silent:").task(t).header)}
        served.close()
        assert 0 < len(on_victim & set(runs)) < 48
        async for _ in store.queue.renew_leases({t: r.lease_token for t, r in runs.items()}, 15):
            pass  # its script loaded on every master too
        stopped: list[str] = []
        keeper = LeaseKeeper(store.queue, runs, 15.0, stopped.append)
        loops = [asyncio.create_task(keeper.renew_loop()), asyncio.create_task(keeper.watch_loop())]

        await asyncio.sleep(0.3)  # past the deadlines and the dropped leases
        slow_to_fail_over.hang(victim)
        hung_at = time.monotonic()
        async with asyncio.timeout(3):  # not the silent master's 5 s
            (_, expired), taken_over, claimed = await asyncio.gather(
                store.waits.release_due(),
                store.queue.release_expired_leases(),
                store.queue.claim_tasks("replica-a", 60, 100),
            )
        assert set(expired) == {t.task_id for t, _ in expiring} - on_victim
        assert taken_over == len({t.task_id for t, _ in dropped} - on_victim)
        assert {t.task_id for t, _ in made} - on_victim <= {task.task_id for task, _ in claimed}
        await asyncio.sleep(16)  # two socket timeouts; the failover (node timeout 5 s) meanwhile
        healthy = {t: r for t, r in runs.items() if t not in on_victim}
        assert not [t for t, r in healthy.items() if r.stopped or r.task.cancelled()], stopped
        assert all(r.lease_until > hung_at + 15 for r in healthy.values())  # renewed since the failover
    finally:
        for loop in loops:
            loop.cancel()
        slow_to_fail_over.wake(victim)
        await store.close()


async def put_behind_a_proxy(cluster: LocalCluster, port: int) -> TcpProxy:
    """Have the master on `port` announce a proxy in front of it, and the cluster tell clients so
    (a cluster redirects its clients to the addresses its nodes announce); its bus stays direct."""
    proxy = await TcpProxy(f"127.0.0.1:{port}").start()
    announced = int(proxy.address.rsplit(":", 1)[1])
    node = redis.Redis(port=port)
    node.config_set("cluster-announce-bus-port", port + 10000)
    node.config_set("cluster-announce-port", announced)
    node.close()
    deadline = time.monotonic() + 20
    for other in cluster.answering():
        client = redis.Redis(port=other)
        while announced not in {int(owner[1]) for _, _, owner, *_ in client.execute_command("CLUSTER SLOTS")}:  # type: ignore[no-untyped-call]
            assert time.monotonic() < deadline, "the cluster did not learn of the proxy"
            await asyncio.sleep(0.05)
        client.close()
    return proxy


async def test_a_renewal_stuck_on_a_dead_connection_to_a_master_goes_through_on_one_of_its_own(own_cluster):
    """The connections open to one master go silent (their peer gone, the path there alive: new
    ones answer), many of them idle in its pool. A renewal that goes out on one waits for the
    socket timeout (5 s), past what the lease watch allows (1 s here); a sixth of a lease on, its
    round asks again on a connection of its own to each master, and every lease is renewed: no run
    is stopped. (Asked again on the shared client, the ask took another silent connection from
    the pool, and the runs that master served were stopped.)"""
    victim = own_cluster.masters()[0]
    proxy = await put_behind_a_proxy(own_cluster, victim)
    store = await open_store(f"{own_cluster.url}?prefix=stuck:")
    loops: list[asyncio.Task[None]] = []
    try:
        runs: dict[str, HeldRun] = {}
        for _ in range(24):
            await store.queue.create_task(*new_task())
        while (claim := await store.queue.claim_task("replica-a", 1.5)) is not None:
            runs[claim[0].task_id] = HeldRun(claim[1], time.monotonic() + 1.5, asyncio.create_task(asyncio.sleep(60)))
        announced = int(proxy.address.rsplit(":", 1)[1])
        node = store.connection.r.get_node(host="127.0.0.1", port=announced)
        behind = [t for t in runs if store.connection.r.get_node_from_key(LAYOUT_OF_STUCK.task(t).header) is node]
        assert 0 < len(behind) < len(runs)  # some of the runs on the master behind the proxy
        stopped: list[str] = []
        keeper = LeaseKeeper(store.queue, runs, 1.5, stopped.append)
        loops = [asyncio.create_task(keeper.renew_loop()), asyncio.create_task(keeper.watch_loop())]
        # connections left idle in its pool, about to go silent too
        await asyncio.gather(*(store.connection.r.ping(target_nodes=node) for _ in range(16)))
        await asyncio.sleep(0.6)  # a round or so of renewals as usual

        assert proxy.freeze() >= 16
        frozen_at = time.monotonic()
        await asyncio.sleep(4)  # within the socket timeout: the asks on silent connections still wait

        assert not stopped and not [t for t, r in runs.items() if r.stopped or r.task.cancelled()]
        assert all(r.lease_until > frozen_at + 1.5 for r in runs.values())  # renewed since the freeze
    finally:
        for loop in loops:
            loop.cancel()
        for run in runs.values():
            run.task.cancel()
        await store.close()
        await proxy.stop()


async def queue_around(store: Any, prefix: str, victim: int) -> tuple[set[str], set[str]]:
    """48 tasks queued: the ids of those the other masters serve, and of those `victim` serves."""
    made = [new_task() for _ in range(48)]
    for task, event in made:
        await store.queue.create_task(task, event)
    served = redis.Redis(port=victim)
    on_victim = {t.task_id for t, _ in made if served_by(served, Layout(prefix).task(t.task_id).header)}
    served.close()
    assert 0 < len(on_victim) < 48
    return {t.task_id for t, _ in made} - on_victim, on_victim


async def claim_every(store: Any, wanted: set[str]) -> dict[str, int]:
    """Claim until every task of `wanted` is, none but those, each claim within 3 s (not a silent
    master's 5 s, twice); a claim shares its count out over the partitions, so one may leave
    some for the next. The leases claimed."""
    leases: dict[str, int] = {}
    for _ in range(5):
        async with asyncio.timeout(3):
            with contextlib.suppress(Unavailable):  # no master answered: only the victim's were left
                for task, token in await store.queue.claim_tasks("replica-a", 60, 100):
                    assert task.task_id in wanted and task.task_id not in leases
                    leases[task.task_id] = token
        if set(leases) == wanted:
            break
    assert set(leases) == wanted
    return leases


async def test_a_script_a_master_lacks_is_loaded_there_alone_while_another_master_is_silent(slow_to_fail_over):
    """A replica that starts, or a promoted replica, has no scripts loaded: redis-py loads a script
    a node lacks on every master, so one master gone silent (SIGSTOP) held up every first call of a
    script to the others for two socket timeouts. A script is now loaded on the master that lacked
    it alone: claims and renewals on the masters that answer go through at once."""
    store = await open_store(f"{slow_to_fail_over.url}?prefix=load:")
    victim = slow_to_fail_over.masters()[0]
    try:
        healthy, _ = await queue_around(store, "load:", victim)
        for port in slow_to_fail_over.answering():  # as a store's nodes are before a replica's first call
            node = redis.Redis(port=port)
            node.script_flush()
            node.close()
        slow_to_fail_over.hang(victim)

        leases = await claim_every(store, healthy)
        async with asyncio.timeout(3):
            renewed = [t async for reply in store.queue.renew_leases(leases, 60) for t in reply.renewed]
        assert sorted(renewed) == sorted(leases)
    finally:
        slow_to_fail_over.wake(victim)
        await store.close()


async def test_a_master_gone_silent_between_a_claim_s_reads_holds_up_only_its_own_part(slow_to_fail_over):
    """A claim reads the heads of every master's queues, then claims from those with tasks. A
    master that goes silent between the two (SIGSTOP) is waited for a moment, not two socket
    timeouts: the tasks claimed on the others are handed out at once (before, the whole claim
    waited, their leases running out meanwhile)."""
    store = await open_store(f"{slow_to_fail_over.url}?prefix=between:")
    victim = slow_to_fail_over.masters()[0]
    try:
        healthy, _ = await queue_around(store, "between:", victim)
        for port in slow_to_fail_over.masters():  # as a replica's are by its first claims
            node = redis.Redis(port=port)
            node.script_load(store.queue._claim.script)
            node.close()
        read_heads = store.queue._queue_heads

        async def heads_then_silence() -> Any:
            heads = await read_heads()
            slow_to_fail_over.hang(victim)
            return heads

        store.queue._queue_heads = heads_then_silence  # the seam between the two reads
        await claim_every(store, healthy)
    finally:
        slow_to_fail_over.wake(victim)
        await store.close()


async def test_a_silent_master_holds_up_only_the_cancel_requests_of_its_own_tasks(slow_to_fail_over):
    """A replica reads the cancel requests (and the pending signals) of the tasks it runs every
    half second, or every `signal_poll_seconds`. On a cluster,
    a master gone silent (SIGSTOP) answered that read only at its socket timeout, twice, and the
    requests of every other master waited with it (a call-off reached its run ~16 s late in the
    cluster soak); each master is now read on its own, and waited for a moment at most."""
    store = await open_store(f"{slow_to_fail_over.url}?prefix=cancels:")
    victim = slow_to_fail_over.masters()[0]
    try:
        healthy, on_victim = await queue_around(store, "cancels:", victim)
        for task_id in healthy | on_victim:
            assert await store.queue.request_cancel(task_id, "called off")
        one, other = next(iter(healthy)), next(iter(on_victim))
        await store.queue.cancel_requests([one, other])  # as a replica's polls do before one goes silent
        slow_to_fail_over.hang(victim)

        async with asyncio.timeout(2.5):  # not the silent master's 5 s, twice (a second of grace for it)
            every = await store.queue.cancel_requests(sorted(healthy | on_victim))  # each partition's list
        async with asyncio.timeout(2.5):
            few = await store.queue.cancel_requests([one, other])  # each task's own entry
        async with asyncio.timeout(2.5):
            signalled = await store.waits.pending_signals(sorted(healthy))  # read the same way
        assert every == {task_id: "called off" for task_id in healthy}
        assert few == {one: "called off"}
        assert signalled == set()
    finally:
        slow_to_fail_over.wake(victim)
        await store.close()


async def test_with_wait_replicas_a_claim_no_replica_has_hands_out_no_task(own_cluster):
    """With `wait_replicas=1` a claim counts once a replica has it, as a create and a checkpoint
    do: one its master acknowledged and then lost in a failover would run a task the new master
    still has queued, under the same lease token, for another replica to claim and run too. A
    master whose replica is gone hands out none of its tasks; the others' are claimed."""
    store = await open_store(f"{own_cluster.url}?prefix=acked:&wait_replicas=1")
    victim = own_cluster.masters()[0]
    try:
        healthy, _ = await queue_around(store, "acked:", victim)
        served = redis.Redis(port=victim)
        own_cluster.kill(int(served.info("replication")["slave0"]["port"]))
        served.close()

        await claim_every(store, healthy)
    finally:
        await store.close()


@pytest.mark.parametrize("away", ["killed", "hung"])
async def test_a_redis_master_away_fails_over_and_every_task_finishes(plugins, testkit, own_cluster, away):
    """Killed (its connections refused) or hung (SIGSTOP: a host gone silent, nothing answers and
    nothing is refused until the socket timeout), a master away stops only its own tasks' runs."""
    store = f"{own_cluster.url}?prefix=failover:&wait_replicas=1"
    # Between the cluster agreeing the master failed (the node timeout) and its replica's promotion,
    # every node refuses commands (cluster-require-full-coverage, on by default): for about a second
    # here no lease can be renewed anywhere, so leases must outlast that (a watch at 2/3 of 6 s)
    async with replica_set(2, store, [plugins["testkit"].address], "failover", MCP_LEASE_SECONDS="6") as (_, clients):
        await create(clients[0], LONG_CHAIN)
        tasks = await asyncio.gather(*(submit(clients[i % 2], "chain") for i in range(24)))
        watchers = [
            asyncio.create_task(follow(clients[0], t.task_id)) for t in tasks
        ]  # all on one surviving orchestrator
        await asyncio.sleep(0.5)
        victim = own_cluster.masters()[0]
        served = redis.Redis(port=victim)
        on_victim = {t.task_id for t in tasks if served_by(served, LAYOUT.task(t.task_id).header)}
        served.close()
        own_cluster.kill(victim) if away == "killed" else own_cluster.hang(victim)
        await asyncio.to_thread(
            own_cluster.wait_failover, victim
        )  # its replica takes over after the node timeout (2 s)
        # The promoted replica has no replica of its own, so with wait_replicas=1 its partitions
        # cannot acknowledge writes (they pause) until the dead node comes back, as its replica.
        own_cluster.start_node(victim) if away == "killed" else own_cluster.wake(victim)
        logs = await asyncio.wait_for(asyncio.gather(*watchers), 120)
        calls = (await plugin_stats(testkit))["calls"]
        for log in logs:
            assert_gapless(log)
            assert_no_finished_step_ran_twice(log, calls)
        resumed = {log[0].task_id for log in logs if any(e.type == E.TASK_EVENT_TYPE_RESUMED for e in log)}
        assert on_victim and not resumed - on_victim, "a master away held up the leases of tasks it did not serve"
        async with asyncio.timeout(20):  # a replica was promoted; the dead node came back as its replica
            while victim in own_cluster.masters() or len(own_cluster.masters()) != 3:
                await asyncio.sleep(0.2)
        health = health_pb2_grpc.HealthStub(clients[1].channel)
        assert (await health.Check(health_pb2.HealthCheckRequest())).status == health_pb2.HealthCheckResponse.SERVING


# ---- bad input -------------------------------------------------------------------------------
def server_exits(store: str) -> str:
    """Start a server on `store`; it must refuse to start. Returns what it said."""
    result = subprocess.run(
        [sys.executable, "-m", "mcp_server", "--listen", f"127.0.0.1:{free_port()}", "--store", store],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0, result.stdout + result.stderr
    return result.stdout + result.stderr


async def test_a_cluster_url_with_no_reachable_node_refuses_to_start_naming_the_nodes():
    first, second = free_port(), free_port()
    said = await asyncio.to_thread(server_exits, f"redis-cluster://127.0.0.1:{first},127.0.0.1:{second}")
    assert "no Redis Cluster node answered" in said and f"127.0.0.1:{first}" in said and f"127.0.0.1:{second}" in said


async def test_single_node_and_cluster_urls_pointed_at_the_other_kind_are_refused(redis_cluster, redis_base_url):
    node = f"127.0.0.1:{redis_cluster.ports[0]}"
    said = await asyncio.to_thread(server_exits, f"redis://{node}/0")
    assert "is a node of a Redis Cluster: use redis-cluster://" in said
    single = redis_base_url.split("//")[1].split("/")[0]
    said = await asyncio.to_thread(server_exits, f"redis-cluster://{single}")
    assert "is not a Redis Cluster" in said and "use redis://" in said


async def test_a_cluster_with_a_slot_not_served_is_not_serving_and_answers_unavailable(server_factory, own_cluster):
    running = await server_factory(store=f"{own_cluster.url}?prefix=uncovered:")
    client = client_for_address(running.address)
    await create(client, workflow("any", step("s", "echo")))
    # take every slot of one master away: a third of the keys have nowhere to go
    master = own_cluster.masters()[0]
    node = redis.Redis(port=master)
    slots = [
        s
        for start, end, owner, *_ in node.execute_command("CLUSTER SLOTS")
        if int(owner[1]) == master
        for s in range(int(start), int(end) + 1)
    ]
    for port in own_cluster.masters() + [p for p in own_cluster.ports if p not in own_cluster.masters()]:
        other = redis.Redis(port=port)
        try:
            other.execute_command("CLUSTER", "DELSLOTS", *slots)
        except redis.RedisError:
            pass
        other.close()
    node.close()
    health = health_pb2_grpc.HealthStub(client.channel)
    async with asyncio.timeout(20):
        while (
            await health.Check(health_pb2.HealthCheckRequest())
        ).status != health_pb2.HealthCheckResponse.NOT_SERVING:
            await asyncio.sleep(0.2)
    failures = 0
    for _ in range(20):
        try:
            await submit(client, "any")
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.UNAVAILABLE and "redis" in err.details().lower()
            failures += 1
    assert failures > 0
    await client.channel.close()


async def test_a_long_conversation_in_chunks_reads_back_on_the_cluster(server_factory, testkit, cluster_url):
    running = await server_factory(store=cluster_url)
    client = client_for_address(running.address)
    try:
        await long_conversation_reads_back(client, testkit)
    finally:
        await client.channel.close()
