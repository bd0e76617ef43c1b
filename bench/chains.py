"""The cost of a task against the thinnest orchestrator, measured side by side in one run.

A 3-step chain of no-op (`echo`) steps, 64 in flight for throughput, one at a time for
latency. The floor is bench/thin.py: client -> grpc.aio orchestrator -> step, one Redis MULTI
per step, the result in the reply. This server's result is read the way its clients read it,
by watching the task to its terminal event (WatchTask, WatchTaskEvents), and in one RunTask
call that answers with the finished task, as the floor answers with the result. CPU is counted in every process involved
(client, orchestrator, plugin, Redis), per chain.

Every system runs at once and the rounds interleave (round 1 of each, then round 2 of each...),
so the drift of a shared machine falls on all of them alike; each figure is the median of
the rounds."""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import redis as redis_sync

from bench.harness import (
    CpuMeter,
    Orchestrated,
    Proc,
    Stat,
    chain,
    percentile,
    start_orchestrator,
    start_thin,
    throughput,
)
from bench.report import REDIS, table
from mcp_sdk.proto import protocol_pb2, protocol_pb2_grpc
from mcp_server.engine.values import dict_to_struct

Row = tuple[str, Stat | float | str, str]


@dataclass
class System:
    """One thing measured: how to run a chain on it, and which processes do the work."""

    name: str
    run_one: Callable[[], Awaitable[Any]]
    processes: dict[str, int]
    p50: Stat = field(default_factory=Stat)
    rate: Stat = field(default_factory=Stat)
    cpu: Stat = field(default_factory=Stat)
    cpu_by_process: dict[str, list[float]] = field(default_factory=dict)

    async def round(self, samples: int, total: int) -> None:
        times = []
        for _ in range(samples):
            started = time.perf_counter()
            await self.run_one()
            times.append((time.perf_counter() - started) * 1000)
        self.p50.runs.append(percentile(times, 0.5))
        meter = CpuMeter(list(self.processes.values()))
        meter.start()
        self.rate.runs.append(await throughput(self.run_one, 64, total))
        used = meter.stop()
        self.cpu.runs.append(sum(used) * 1000 / total)
        for name, seconds in zip(self.processes, used):
            self.cpu_by_process.setdefault(name, []).append(seconds * 1000 / total)

    def rows(self, floor: System | None) -> list[Row]:
        def ratio(mine: Stat, theirs: Stat) -> str:
            return f"{mine.median / theirs.median:.2f}x the thin floor"

        split = ", ".join(f"{k} {sorted(v)[len(v) // 2]:.2f}" for k, v in self.cpu_by_process.items())
        if floor is None:
            return [
                (f"{self.name}: p50 ms", self.p50, ""),
                (f"{self.name}: chains/s, 64 in flight", self.rate, ""),
                (f"{self.name}: CPU ms per chain, all processes", self.cpu, split),
            ]
        return [
            (f"{self.name}: p50 ms", self.p50, ratio(self.p50, floor.p50)),
            (f"{self.name}: chains/s, 64 in flight", self.rate, ratio(self.rate, floor.rate)),
            (f"{self.name}: CPU ms per chain, all processes", self.cpu, f"{ratio(self.cpu, floor.cpu)}; {split}"),
        ]


def floor_systems(
    plugin: Proc, here: dict[str, int], procs: list[Proc], closers: list[Callable[[], Awaitable[None]]]
) -> tuple[protocol_pb2_grpc.ProtocolServiceStub, list[System]]:
    """The two floors on `plugin`: a client calling it 3 times, and the thin orchestrator (started
    here; it and the channels go to `procs` and `closers`). Returns a stub to the plugin as well."""
    channel = grpc.aio.insecure_channel(plugin.address)
    closers.append(channel.close)
    bare_stub = protocol_pb2_grpc.ProtocolServiceStub(channel)
    thin = start_thin(plugin.address, REDIS)
    procs.append(thin)
    thin_channel = grpc.aio.insecure_channel(thin.address)
    closers.append(thin_channel.close)
    thin_stub = protocol_pb2_grpc.ProtocolServiceStub(thin_channel)
    return bare_stub, [
        System(
            "bare gRPC: the client calls the plugin 3 times",
            lambda: bare_chain(bare_stub, 3),
            {"client": here["client"], "plugin": here["plugin"]},
        ),
        System(
            "thin orchestrator + Redis (the floor)",
            lambda: thin_chain(thin_stub, 3),
            {**here, "orchestrator": thin.process.pid},
        ),
    ]


def redis_pid(url: str) -> int:
    client = redis_sync.Redis.from_url(url)
    try:
        return int(client.info("server")["process_id"])
    finally:
        client.close()


async def bench_chains(
    plugin: Proc, quick: bool, baseline: Path | None = None, variants: list[str] | None = None
) -> None:
    """`variants`: extra runs of this server on Redis with some environment, each
    "NAME:VAR=VALUE[,VAR=VALUE]" (for example "no hiredis:PYTHONPATH=bench/variants/no_hiredis")."""
    samples, rounds, total = (40, 3, 192) if quick else (150, 5, 640)
    here = {"client": os.getpid(), "plugin": plugin.process.pid, "redis": redis_pid(REDIS)}
    servers: list[tuple[str, str, Path | None, dict[str, str]]] = [
        ("this server, redis store", "redis", None, {}),
        ("this server, sqlite store", "sqlite", None, {}),
    ]
    if baseline is not None:
        servers.append((f"before ({baseline.name[:8]}), redis store", "redis", baseline, {}))
    for variant in variants or []:
        label, _, settings = variant.partition(":")
        servers.append(
            (
                f"this server, redis store, {label}",
                "redis",
                None,
                dict(i.split("=", 1) for i in settings.split(",") if i),
            )
        )
    procs: list[Proc] = []
    closers: list[Callable[[], Awaitable[None]]] = []
    try:
        _bare_stub, systems = floor_systems(plugin, here, procs, closers)
        for name, backend, code, env in servers:
            url = (
                f"{REDIS}?prefix=bench:{uuid.uuid4().hex[:8]}:"
                if backend == "redis"
                else f"sqlite:///{tempfile.mkdtemp()}/bench.db"
            )
            orchestrator = start_orchestrator(url, [plugin.address], code=code, **env)
            procs.append(orchestrator)
            client = Orchestrated(orchestrator.address)
            closers.append(client.close)
            await client.create(chain("three", 3))
            await client.run("three")
            systems.append(System(name, _runner(client), {**here, "orchestrator": orchestrator.process.pid}))
            if name == "this server, redis store":
                systems.append(
                    System(
                        f"{name}, WatchTaskEvents",
                        _runner(client, "events"),
                        {**here, "orchestrator": orchestrator.process.pid},
                    )
                )
            if code is None and not env:
                systems.append(
                    System(
                        f"{name}, SubmitAndWatchTask",
                        _runner(client, "submit-watch"),
                        {**here, "orchestrator": orchestrator.process.pid},
                    )
                )
                systems.append(
                    System(
                        f"{name}, RunTask", _runner(client, "run"), {**here, "orchestrator": orchestrator.process.pid}
                    )
                )
        for _ in range(rounds):
            for system in systems:
                await system.round(samples, total)
    finally:
        for close in closers:
            await close()
        for proc in procs:
            proc.stop()
    rows = systems[0].rows(None) + systems[1].rows(None)
    for system in systems[2:]:
        rows += system.rows(systems[1])
    table("3-step chain of no-op steps against the thinnest orchestrator (same run, rounds interleaved)", rows)


def _runner(client: Orchestrated, read: str = "watch") -> Callable[[], Awaitable[float]]:
    return lambda: client.run("three", read=read)


async def bare_chain(stub: protocol_pb2_grpc.ProtocolServiceStub, steps: int) -> None:
    value = dict_to_struct({"x": 1})
    for i in range(steps):
        value = (
            await stub.Execute(
                protocol_pb2.ExecuteRequest(
                    protocol="echo", input=value, context=protocol_pb2.ExecutionContext(step_path=f"s{i}")
                )
            )
        ).output


async def thin_chain(stub: protocol_pb2_grpc.ProtocolServiceStub, steps: int) -> None:
    await stub.Execute(protocol_pb2.ExecuteRequest(protocol="chain", input=dict_to_struct({"steps": steps, "x": 1})))


async def fanout_floor(stub: protocol_pb2_grpc.ProtocolServiceStub, branches: int, ms: int) -> float:
    """Wall ms of `branches` concurrent `ms` plugin calls made straight from a client."""
    started = time.perf_counter()
    await asyncio.gather(
        *(
            stub.Execute(protocol_pb2.ExecuteRequest(protocol="sleep", input=dict_to_struct({"ms": ms})))
            for _ in range(branches)
        )
    )
    return (time.perf_counter() - started) * 1000
