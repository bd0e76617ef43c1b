"""`python -m bench.chaos [--seconds 120] [--store redis|sqlite|cluster] [--replicas 2] [--processes 1]
[--kill-redis] [--partition] [--seed N]`: a soak of random workflows under kill -9.

The workflows are the property tests' (tests/support/random_workflows.py: every node kind, nested,
subworkflows, recover nodes that clean up, agents, waits for a signal or an event, publishes of
that event, durable sleeps, timeouts, failing and flaky steps). A steady load of them runs on
`--replicas` orchestrator processes sharing one store, some signalled and some cancelled at
random moments, some rerun once ended, while a replica is killed -9 every 0.5-3 s and started
again (with `--kill-redis`, a quarter of the kills are of Redis, restarted from its AOF after up
to 2 s; on `--store cluster`, a six-node Redis Cluster with `wait_replicas=1`, they are of a
master, killed -9 or hung with SIGSTOP, brought back once its replica took over; with
`--partition`, each replica reaches Redis through a TCP proxy of its own, and now and then one is
cut off for 0.5-4 s, past its leases, refused at once or silently, while the others take its runs
over). Every call goes to a random live replica and is retried on another
with the same request id when it dies.

Once the kills stop, every task must end, and then for each: no step left running or without an
end time, no internal error, no signal taken by two steps or received twice, no step a rerun kept
called again, no step called more often than its recorded attempts plus, for each time its task
was resumed, the attempts a killed life may have made before writing them (calls are
at-least-once: docs/plugins.md), and a cancelled task's clean-up with an outcome. Prints what it
saw and each task that broke one of these, with its workflow written to a file to replay; exits 1
if any did.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed

from bench.harness import Orchestrated, Proc, free_port, start_orchestrator, start_plugin
from bench.report import table
from mcp_sdk.errors import McpError
from mcp_sdk.proto import protocol_pb2, protocol_pb2_grpc, task_pb2
from mcp_server.engine.values import struct_to_dict
from tests.support.random_workflows import SIGNAL, definitions, store_subworkflows, waits_for_signal
from tests.support.redis_cluster import LocalCluster, start_cluster
from tests.support.redis_server import start_redis_server
from tests.support.tcp_proxy import TcpProxy

LEASE_SECONDS = 1.5  # by default: a killed replica's tasks are taken over within 1.5 s
TERMINAL = {task_pb2.TASK_STATUS_COMPLETED, task_pb2.TASK_STATUS_FAILED, task_pb2.TASK_STATUS_CANCELLED}
TERMINAL_EVENTS = {
    task_pb2.TASK_EVENT_TYPE_COMPLETED,
    task_pb2.TASK_EVENT_TYPE_FAILED,
    task_pb2.TASK_EVENT_TYPE_CANCELLED,
}
MAX_ATTEMPTS = 2  # of every step tests/property/test_random_workflows.py generates
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}


def generated(count: int, seed: int, sleep_ms: int) -> list[dict[str, Any]]:
    """`count` random workflow roots, the same for the same seed, their sleeping steps sleeping
    `sleep_ms` (so that more kills land while a task runs)."""
    found: list[dict[str, Any]] = []

    @hypothesis_seed(seed)
    @settings(
        max_examples=count,
        database=None,
        phases=[Phase.generate],
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(definitions)
    def collect(root: dict[str, Any]) -> None:
        found.append(root)

    collect()
    for root in found:
        _slow_down(root, sleep_ms)
    return found


def _slow_down(node: Any, sleep_ms: int) -> None:
    if isinstance(node, dict):
        step = node.get("step")
        if isinstance(step, dict) and step.get("protocol") == "sleep":
            step["input"] = f"{{'ms': {sleep_ms}}}"
        for value in node.values():
            _slow_down(value, sleep_ms)
    elif isinstance(node, list):
        for value in node:
            _slow_down(value, sleep_ms)


@dataclass
class Replicas:
    """The orchestrator processes and a client of each; a killed one is None until restarted."""

    store: str
    plugin: str
    procs: list[Proc | None] = field(default_factory=list)
    clients: list[Orchestrated | None] = field(default_factory=list)
    processes: int = 1  # server processes per replica (--processes)
    lease_seconds: float = LEASE_SECONDS  # MCP_LEASE_SECONDS of every replica (--lease-seconds)
    kills: int = 0
    starts: int = 0
    logs: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="chaos-logs-"))
    dead: list[Orchestrated] = field(default_factory=list)  # closed at the end: calls may be in flight on them
    # with --partition: each replica reaches Redis through a proxy of its own, which the killer cuts
    proxies: list[TcpProxy] = field(default_factory=list)
    partitions: int = 0

    def store_of(self, index: int) -> str:
        if not self.proxies:
            return self.store
        scheme, rest = self.store.split("://", 1)
        return f"{scheme}://{self.proxies[index].address}/{rest.split('/', 1)[1]}"

    async def partition(self) -> None:
        """Cut one replica off from Redis for a third of a lease to 2.7 leases (0.5-4 s at the
        default 1.5 s), often past its leases: refused at once, or silently (nothing answered);
        the others take its runs over meanwhile."""
        proxy = random.choice(self.proxies)
        proxy.cut() if random.random() < 0.5 else proxy.blackhole()
        self.partitions += 1
        await asyncio.sleep(random.uniform(0.5, 4) * self.lease_seconds / LEASE_SECONDS)
        proxy.mend()

    async def start(self, index: int) -> None:
        def start() -> Proc:
            return start_orchestrator(
                self.store_of(index),
                [self.plugin],
                f"chaos{index}",
                log_to=self.log_to(index),
                MCP_LEASE_SECONDS=str(self.lease_seconds),
                MCP_PROCESSES=str(self.processes),
            )

        proc = await asyncio.to_thread(start)
        self.procs[index], self.clients[index] = proc, Orchestrated(proc.address)

    def log_to(self, index: int) -> str:
        """A log file per life of a replica, in this soak's directory of logs."""
        self.starts += 1
        return str(Path(self.logs) / f"replica-{index}-life-{self.starts}.log")

    async def kill(self, index: int) -> None:
        proc, client = self.procs[index], self.clients[index]
        self.procs[index] = self.clients[index] = None
        if proc is not None:
            for pid in proc.pids().values():  # with --processes N, its children too, all at once
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            await asyncio.to_thread(proc.process.wait)
            self.kills += 1
        if client is not None:
            self.dead.append(client)

    def any_client(self) -> Orchestrated:
        live = [client for client in self.clients if client is not None]
        return random.choice(live)

    async def close(self) -> None:
        for client in [*self.clients, *self.dead]:
            if client is not None:
                await client.close()

    async def call(self, method: str, request: Any, timeout: float = 60, service: Any = None) -> Any:
        """`method` of TaskService (or of `service`, a stub class) on a live replica, again on
        another while they die, and again after the time a rate limit's refusal names."""
        deadline = time.monotonic() + timeout
        while True:
            pause = 0.1
            try:
                client = self.any_client()
                stub = client.tasks if service is None else service(client.channel)
                return await getattr(stub, method)(request, timeout=10)
            except (grpc.aio.AioRpcError, IndexError) as error:
                if isinstance(error, grpc.aio.AioRpcError) and error.code() not in RETRYABLE:
                    retry_after = McpError.from_rpc_error(error).retry_after
                    if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or retry_after is None:
                        raise
                    pause = retry_after + random.uniform(0, 0.05)
                if time.monotonic() + pause > deadline:
                    raise
                await asyncio.sleep(pause)

    async def labelled(self, labels: dict[str, str]) -> list[task_pb2.Task]:
        """Every task with these labels, page after page."""
        found: list[task_pb2.Task] = []
        token = ""
        while True:
            request = task_pb2.ListTasksRequest(page_size=1000, page_token=token, labels=labels)
            page = await self.call("ListTasks", request)
            found += page.tasks
            if not (token := page.next_page_token):
                return found


@dataclass
class OwnRedis:
    """The soak's own Redis (AOF, fsync always), which `--kill-redis` kills -9 and restarts."""

    port: int = field(default_factory=free_port)
    directory: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="chaos-redis-"))
    process: subprocess.Popen[bytes] | None = None
    kills: int = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        options = ("--appendonly", "yes", "--appendfsync", "always")
        self.process = await asyncio.to_thread(start_redis_server, self.port, self.directory, *options)

    async def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            await asyncio.to_thread(self.process.wait)
            self.kills += 1


@dataclass
class OwnCluster:
    """The soak's own Redis Cluster (three masters, three replicas, AOF), on which `--kill-redis`
    stops a master now and then, killed -9 or hung (SIGSTOP: a frozen host that answers nothing
    and refuses nothing), and brings it back as its replica's replica once the replica took over."""

    cluster: LocalCluster | None = None
    kills: int = 0
    hangs: int = 0
    _away: tuple[int, bool] | None = None  # the master away, and whether it was hung

    @property
    def url(self) -> str:
        assert self.cluster is not None
        return f"{self.cluster.url}?wait_replicas=1"  # an acknowledged step survives its master

    async def start(self) -> None:
        if self.cluster is None:
            self.cluster = await asyncio.to_thread(start_cluster)
            return
        if self._away is not None:
            port, hung = self._away
            self._away = None
            self.cluster.wake(port) if hung else await asyncio.to_thread(self.cluster.start_node, port)
            await asyncio.to_thread(self.cluster.wait_in_sync)

    async def kill(self) -> None:
        assert self.cluster is not None
        port = random.choice(self.cluster.masters())
        hung = random.random() < 0.5
        self.cluster.hang(port) if hung else self.cluster.kill(port)
        self.hangs += hung
        self.kills += not hung
        self._away = (port, hung)
        await asyncio.to_thread(self.cluster.wait_failover, port)

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()


@dataclass
class History:
    """What one task's event log says: how often it was resumed, and which signals (by request
    id) were received, as often as each was."""

    resumes: int = 0
    received: collections.Counter[str] = field(default_factory=collections.Counter)


@dataclass
class Soak:
    replicas: Replicas
    roots: dict[str, dict[str, Any]]
    redis: OwnRedis | OwnCluster | None = None  # killed too, when given
    tasks: dict[str, str] = field(default_factory=dict)  # task id: workflow id
    cancels: int = 0
    refused_cancels: int = 0
    # the request ids of the signals each task accepted (a retry on another replica reuses its id)
    signals: collections.defaultdict[str, set[str]] = field(default_factory=lambda: collections.defaultdict(set))
    refused_signals: collections.Counter[str] = field(default_factory=collections.Counter)
    reruns: int = 0
    refused_reruns: collections.Counter[str] = field(default_factory=collections.Counter)

    async def one(self, workflow_id: str) -> None:
        request = task_pb2.SubmitTaskRequest(workflow_id=workflow_id, request_id=uuid.uuid4().hex)
        request.input_data.update({"n": 0})
        task = (await self.replicas.call("SubmitTask", request)).task
        self.tasks[task.task_id] = workflow_id
        if waits_for_signal(self.roots[workflow_id]) and random.random() < 0.6:
            for _ in range(random.randint(1, 3)):
                await asyncio.sleep(random.uniform(0, 0.3))
                await self.signal(task.task_id)
        if random.random() < 0.15:
            await asyncio.sleep(random.choice([0.0, 0.005, 0.02, 0.1]))
            self.cancels += 1
            try:
                await self.replicas.call("CancelTask", task_pb2.CancelTaskRequest(task_id=task.task_id, reason="chaos"))
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.FAILED_PRECONDITION:  # it had ended
                    raise
                self.refused_cancels += 1
        ended = await self.ended(task.task_id, timeout=300)
        if ended.status != task_pb2.TASK_STATUS_COMPLETED and random.random() < 0.2:
            await self.rerun(task.task_id, workflow_id)

    async def rerun(self, task_id: str, workflow_id: str) -> None:
        """Rerun a task that did not complete: a redrive, or from one of its steps at random."""
        steps = (await self.replicas.call("GetTask", task_pb2.GetTaskRequest(task_id=task_id))).task.steps
        request = task_pb2.RerunTaskRequest(task_id=task_id, request_id=uuid.uuid4().hex)
        if steps and random.random() < 0.5:
            request.from_step_path = random.choice(steps).path
        try:
            rerun = (await self.replicas.call("RerunTask", request)).task
        except grpc.aio.AioRpcError as error:
            if error.code() not in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT):
                raise
            self.refused_reruns[error.code().name] += 1  # from inside a clean-up, say (docs/reruns.md)
            return
        self.tasks[rerun.task_id] = workflow_id
        self.reruns += 1
        await self.ended(rerun.task_id, timeout=300)

    async def signal(self, task_id: str) -> None:
        request = task_pb2.SignalTaskRequest(task_id=task_id, signal=SIGNAL, request_id=uuid.uuid4().hex)
        request.payload.struct_value.update({"approved": True})
        try:
            await self.replicas.call("SignalTask", request)
        except grpc.aio.AioRpcError as error:
            # a task that had ended (FAILED_PRECONDITION), a name only its subworkflows declare
            # (INVALID_ARGUMENT: they are stored apart, out of `roots`)
            if error.code() not in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT):
                raise
            self.refused_signals[error.code().name] += 1
            return
        self.signals[task_id].add(request.request_id)

    async def finished(self, task_id: str) -> tuple[task_pb2.Task, History]:
        """A finished task, with its steps, and what its event log says."""
        task = (await self.replicas.call("GetTask", task_pb2.GetTaskRequest(task_id=task_id))).task
        return task, await history_of(self.replicas, task_id)

    async def ended(self, task_id: str, timeout: float) -> task_pb2.Task:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            request = task_pb2.GetTaskRequest(task_id=task_id, view=task_pb2.TASK_VIEW_BASIC)
            task: task_pb2.Task = (await self.replicas.call("GetTask", request)).task
            if task.status in TERMINAL:
                return task
            await asyncio.sleep(0.2)
        raise TimeoutError(f"task {task_id} did not end within {timeout} s")

    async def load(self, until: float, in_flight: int) -> None:
        async def worker() -> None:
            while time.monotonic() < until:
                await self.one(random.choice(list(self.roots)))

        await asyncio.gather(*(worker() for _ in range(in_flight)))

    async def killer(self, until: float) -> None:
        while time.monotonic() < until:
            await asyncio.sleep(random.uniform(0.5, 3))
            if self.redis is not None and random.random() < 0.25:
                await self.redis.kill()
                await asyncio.sleep(random.uniform(0.2, 2))
                await self.redis.start()
                continue
            if self.replicas.proxies and random.random() < 0.3:
                await self.replicas.partition()
                continue
            index = random.randrange(len(self.replicas.procs))
            await self.replicas.kill(index)
            await asyncio.sleep(random.uniform(0, 1))
            await self.replicas.start(index)


def problems(task: task_pb2.Task, calls: dict[str, int], history: History, sent: set[str]) -> list[str]:
    """What breaks the soak's invariants in one finished task."""
    found = []
    if "internal error" in task.error.message:
        found.append(f"internal error: {task.error.message}")
    cleaned_up = task.status == task_pb2.TASK_STATUS_CANCELLED and task.HasField("cancel_request")
    if cleaned_up and task.cancel_request.outcome not in ("done", "failed", "cut_short"):
        found.append(f"clean-up without an outcome: {task.cancel_request}")
    taken: collections.Counter[str] = collections.Counter()
    signalled: set[str] = set()
    for state in task.steps:
        if state.status == task_pb2.STEP_STATUS_RUNNING:
            found.append(f"step {state.path} left running")
        elif not state.HasField("end_time"):
            found.append(f"step {state.path} has no end time")
        if state.protocol:
            made = calls.get(f"{task.task_id}/{state.path}/{state.protocol}", 0)
            # a life that was killed may have made every attempt its retry policy allows before
            # writing any of them (the generator's steps make at most MAX_ATTEMPTS)
            if made > state.attempts + history.resumes * MAX_ATTEMPTS:
                found.append(f"step {state.path}: {made} calls, {state.attempts} attempts, {history.resumes} resumes")
            if state.reused and made:
                found.append(f"step {state.path}: kept by the rerun, yet called {made} times")
        if state.status == task_pb2.STEP_STATUS_COMPLETED and state.wait.received_sequence and not state.reused:
            taken[state.wait.request_id] += 1  # (a rerun's kept wait shows the signal its source took)
            if not state.wait.event:  # an event's signal has a request id made from the event's id
                signalled.add(state.wait.request_id)
    # exactly once (docs/waits.md): a signal reaches one step, and is received once
    found += [f"signal {request_id} taken by {n} steps" for request_id, n in taken.items() if n > 1]
    found += [f"signal {request_id} received {n} times" for request_id, n in history.received.items() if n > 1]
    found += [f"signal {request_id} taken, never sent" for request_id in signalled - sent]
    return found


async def history_of(replicas: Replicas, task_id: str) -> History:
    history = History()
    async for message in replicas.any_client().tasks.WatchTaskEvents(task_pb2.WatchTaskRequest(task_id=task_id)):
        for event in message.events:
            if event.type == task_pb2.TASK_EVENT_TYPE_RESUMED:
                history.resumes += 1
            elif event.type == task_pb2.TASK_EVENT_TYPE_SIGNAL_RECEIVED:
                history.received[event.data["request_id"]] += 1
        if any(event.type in TERMINAL_EVENTS for event in message.events):
            break
    return history


@contextlib.asynccontextmanager
async def kill_loop(
    args: argparse.Namespace, processes: int = 1
) -> AsyncIterator[tuple[Replicas, OwnRedis | OwnCluster | None]]:
    """The testkit plugin, the store `args` name (the soak's own Redis, or a new SQLite file) and
    `args.replicas` orchestrator processes on it, started; all stopped on the way out. The Redis
    given back is the one to kill too (None without `--kill-redis`)."""
    plugin = start_plugin()
    redis: OwnRedis | OwnCluster | None = None
    replicas = None
    try:
        if args.store in ("redis", "cluster"):
            redis = OwnRedis() if args.store == "redis" else OwnCluster()
            await redis.start()
            store = redis.url
        else:
            store = f"sqlite:///{tempfile.mkdtemp(prefix='chaos-')}/mcp.db"
        replicas = Replicas(store, plugin.address, [None] * args.replicas, [None] * args.replicas, processes)
        replicas.lease_seconds = args.lease_seconds
        if args.partition and redis is not None:
            host_port = redis.url.split("://", 1)[1].split("/", 1)[0]
            replicas.proxies = [await TcpProxy(host_port).start() for _ in range(args.replicas)]
        for index in range(args.replicas):
            await replicas.start(index)
        yield replicas, redis if args.kill_redis else None
    finally:
        if replicas is not None:
            await replicas.close()
            for proc in replicas.procs:
                if proc is not None:
                    proc.stop()
            for proxy in replicas.proxies:
                await proxy.stop()
        plugin.stop()
        if isinstance(redis, OwnCluster):
            redis.stop()
        elif redis is not None:
            await redis.kill()


def redis_rows(redis: OwnRedis | OwnCluster | None) -> list[tuple[str, float | str, str]]:
    """What the soak did to Redis, for its report."""
    if isinstance(redis, OwnCluster):
        return [
            ("Redis masters killed -9", redis.kills, "each back as its replica's replica once promoted"),
            ("Redis masters hung (SIGSTOP)", redis.hangs, "woken once their replica took over"),
        ]
    return [("Redis killed -9", redis.kills, "and restarted from its AOF")] if redis else []


def kill_loop_arguments(parser: argparse.ArgumentParser, seconds: float) -> None:
    """The arguments every soak on the kill loop takes."""
    parser.add_argument("--seconds", type=float, default=seconds)
    parser.add_argument("--store", choices=["redis", "sqlite", "cluster"], default="redis")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--kill-redis",
        action="store_true",
        help="kill -9 the soak's Redis too, now and then (a cluster's masters: killed -9 or hung)",
    )
    parser.add_argument(
        "--partition", action="store_true", help="cut a replica off from Redis now and then (Redis only)"
    )
    parser.add_argument(
        "--lease-seconds",
        type=float,
        default=LEASE_SECONDS,
        help="every replica's MCP_LEASE_SECONDS (a killed replica's runs are taken over that much later; "
        "on a cluster, the docs ask for 15)",
    )


async def soak(args: argparse.Namespace) -> int:
    random.seed(args.seed)
    async with kill_loop(args, args.processes) as (replicas, redis):
        roots: dict[str, dict[str, Any]] = {}
        client = replicas.any_client()

        async def create(workflow_id: str, root: dict[str, Any]) -> None:
            await client.create({"workflow_id": workflow_id, "root": root})

        for root in generated(args.workflows, args.seed, args.sleep_ms):
            await store_subworkflows(create, root)
            workflow_id = f"chaos-{len(roots)}"
            roots[workflow_id] = root
            await create(workflow_id, root)
        run = Soak(replicas, roots, redis)
        until = time.monotonic() + args.seconds
        started = time.monotonic()
        await asyncio.gather(run.load(until, args.in_flight), run.killer(until))
        soaked = time.monotonic() - started
        return await report(run, args, soaked)


async def report(run: Soak, args: argparse.Namespace, soaked: float) -> int:
    async with grpc.aio.insecure_channel(run.replicas.plugin) as channel:
        stub = protocol_pb2_grpc.ProtocolServiceStub(channel)
        calls = struct_to_dict((await stub.Execute(protocol_pb2.ExecuteRequest(protocol="stats"))).output)["calls"]
    statuses: collections.Counter[str] = collections.Counter()
    broken: dict[str, list[str]] = {}
    resumed = signals_taken = 0
    checked = list(run.tasks.items())
    read = []
    for start in range(0, len(checked), 100):  # read side by side, 100 tasks at a time
        batch = checked[start : start + 100]
        read += await asyncio.gather(*(run.finished(task_id) for task_id, _ in batch))
    for (task_id, workflow_id), (task, history) in zip(checked, read, strict=True):
        statuses[task_pb2.TaskStatus.Name(task.status)] += 1
        resumed += history.resumes > 0
        signals_taken += sum(
            1 for s in task.steps if s.wait.received_sequence and s.status == task_pb2.STEP_STATUS_COMPLETED
        )
        if found := problems(task, calls, history, run.signals[task_id]):
            found.insert(
                0, f"{task_pb2.TaskStatus.Name(task.status)} {task.error.message!r}, resumed {history.resumes} times"
            )
            found.extend(
                f"  {s.path} {task_pb2.StepStatus.Name(s.status)} attempts {s.attempts} {s.error.message!r}"
                for s in task.steps
            )
            broken[task_id] = found
            path = Path(tempfile.gettempdir()) / f"chaos-{task_id}.json"
            path.write_text(json.dumps(run.roots[workflow_id], indent=1))
            found.append(f"workflow: {path}")
    rows: list[tuple[str, float | str, str]] = [
        ("seconds under kills", round(soaked, 1), f"{args.replicas} replicas on {args.store}"),
        ("replicas killed -9", run.replicas.kills, f"their logs: {run.replicas.logs}"),
        *redis_rows(run.redis),
        *(
            [("replicas cut off from Redis", run.replicas.partitions, "0.5-4 s each, refused or silent")]
            if run.replicas.proxies
            else []
        ),
        ("tasks", len(run.tasks), f"{len(run.roots)} random workflows, {args.in_flight} at a time"),
        *((f"  {status}", count, "") for status, count in sorted(statuses.items())),
        ("tasks resumed by another life", resumed, ""),
        ("cancels asked", run.cancels, f"{run.refused_cancels} came after the task had ended"),
        ("reruns", run.reruns, f"refused: {dict(run.refused_reruns)}"),
        ("signals accepted", sum(map(len, run.signals.values())), f"refused: {dict(run.refused_signals)}"),
        ("signals and events taken by a wait step", signals_taken, "each exactly once"),
        ("tasks that broke an invariant", len(broken), ""),
    ]
    table("chaos: random workflows under kill -9", rows)
    for task_id, found in broken.items():
        print(f"\n  task {task_id}:")
        for line in found:
            print(f"    {line}")
    return 1 if broken else 0


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n\n")[0])
    kill_loop_arguments(parser, seconds=120)
    parser.add_argument("--workflows", type=int, default=60)
    parser.add_argument("--in-flight", type=int, default=24)
    parser.add_argument("--processes", type=int, default=1, help="server processes per replica (MCP_PROCESSES)")
    parser.add_argument("--sleep-ms", type=int, default=300, help="what the workflows' sleeping steps sleep")
    args = parser.parse_args()
    if args.store == "sqlite" and args.replicas * args.processes != 1:
        parser.error("the embedded store serves one process: --store sqlite takes --replicas 1 --processes 1")
    if args.store == "cluster" and args.partition:
        parser.error("--partition cuts a path to one Redis; a cluster's clients reach every node on its own")
    sys.exit(asyncio.run(soak(args)))


if __name__ == "__main__":
    main()
