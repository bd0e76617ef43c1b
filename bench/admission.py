"""What admission costs a call when capacity is free: the same 3-step chain of `gpu_echo`
(one GPU per call) on a plugin that declares no capacity (no admission) and on one that
offers 1,000 GPUs (every call admitted), the latter with slices on (the default: a replica asks
for up to 8 units at once and keeps a finished call's unit for the next) and off (every call asks
the shared ledger for one unit), side by side, Redis store.

Latency is paired: each sample runs one chain on every system in turn (the order rotating),
so the drift of a shared machine falls on all of them alike, and the cost per call is the
median of the paired differences divided by the 3 calls of a chain. Throughput and CPU come
from interleaved rounds of 64 chains in flight."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable

from bench.chains import redis_pid
from bench.harness import CpuMeter, Orchestrated, Proc, Stat, chain, percentile, start_orchestrator, throughput
from bench.report import REDIS, table
from mcp_server.engine.ports import CapacityRequest
from mcp_server.plugin_host import READY_LINE
from mcp_server.state import open_store

CALLS_PER_CHAIN = 3


def start_testkit(*extra: str) -> Proc:
    process = subprocess.Popen(
        [sys.executable, "-m", "protocol_plugins.run", "protocol_plugins.testkit", *extra],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.startswith(READY_LINE), line
    return Proc(process, line.split()[1])


async def bench_admission(plugin: Proc, quick: bool) -> None:
    pairs, rounds, total = (150, 3, 192) if quick else (600, 5, 640)
    plain, limited = start_testkit(), start_testkit("--capacity", "gpus=1000")
    setups: list[tuple[str, Proc, dict[str, str]]] = [
        ("capacity unset (no admission)", plain, {}),
        ("capacity set and free, slices off", limited, {"MCP_CAPACITY_KEEP_SECONDS": "0"}),
        ("capacity set and free, slices on", limited, {}),
    ]
    servers = [
        start_orchestrator(f"{REDIS}?prefix=bench:{uuid.uuid4().hex[:8]}:", [box.address], "bench", None, **env)
        for _, box, env in setups
    ]
    clients = [Orchestrated(s.address) for s in servers]
    try:
        runs: list[Callable[[], Awaitable[float]]] = []
        for client in clients:
            await client.create(chain("three", CALLS_PER_CHAIN, "gpu_echo"))
            await client.run("three")
            runs.append(_runner(client))
        latencies: list[list[float]] = [[] for _ in setups]
        for sample in range(pairs):
            for k in range(len(setups)):
                which = (sample + k) % len(setups)
                started = time.perf_counter()
                await runs[which]()
                latencies[which].append((time.perf_counter() - started) * 1000)
        rates, cpus = [Stat() for _ in setups], [Stat() for _ in setups]
        for _ in range(rounds):
            for i, (_, box, _) in enumerate(setups):
                meter = CpuMeter([os.getpid(), servers[i].process.pid, box.process.pid, redis_pid(REDIS)])
                meter.start()
                rates[i].runs.append(await throughput(runs[i], 64, total))
                cpus[i].runs.append(sum(meter.stop()) * 1000 / total)
    finally:
        for client in clients:
            await client.close()
        for proc in (*servers, plain, limited):
            proc.stop()
    rows: list[tuple[str, Stat | float | str, str]] = []
    for (name, _, _), times, rate, cpu in zip(setups, latencies, rates, cpus):
        rows += [
            (f"{name}: p50 ms, one at a time", f"{percentile(times, 0.5):.3f}", ""),
            (f"{name}: chains/s, 64 in flight", rate, ""),
            (f"{name}: CPU ms per chain, all processes", cpu, ""),
        ]
    for i in (1, 2):
        added = statistics.median(b - a for a, b in zip(latencies[0], latencies[i])) / CALLS_PER_CHAIN
        cpu_added = (cpus[i].median - cpus[0].median) / CALLS_PER_CHAIN
        rows += [
            (f"{setups[i][0]}: ms added per call (paired p50)", f"{added:.3f}", "target < 0.2 ms"),
            (f"{setups[i][0]}: CPU ms added per call", f"{cpu_added:.3f}", ""),
        ]
    table("Admission with capacity free: 3-step chain of gpu_echo (same run, paired samples)", rows)
    await bench_ledger_asks(quick)


async def bench_ledger_asks(quick: bool) -> None:
    """One ask of the Redis ledger (a call that must wait: its instance is full) with 0 and with
    1,000 calls already waiting for that instance, as a waiting call asks every 5-100 ms. The
    ask stops ordering waiters once every instance is blocked, so the queue behind does not
    lengthen it."""
    asks = 200 if quick else 1000
    store = await open_store(f"{REDIS}?prefix=bench:{uuid.uuid4().hex[:8]}:")
    ledger, full = store.capacity, {"gpu:1": "0,0,1"}

    def request(waiter: str, at: int) -> CapacityRequest:
        return CapacityRequest(waiter, f"{at:015d}:{waiter}", 0, "0,0,1", full, 30.0, 60.0)

    rows: list[tuple[str, Stat | float | str, str]] = []
    try:
        assert await ledger.acquire_capacity(request("holder", 1)) == "gpu:1"
        for queued in (0, 1000):
            for i in range(queued - (await ledger.capacity_waiting())):
                await ledger.acquire_capacity(request(f"w{i}", 10 + i))
            times = []
            for _ in range(asks):
                started = time.perf_counter()
                assert await ledger.acquire_capacity(request("asker", 5000)) is None
                times.append((time.perf_counter() - started) * 1000)
            rows.append((f"ledger ask, {queued} calls waiting: ms, p50", f"{percentile(times, 0.5):.3f}", ""))
    finally:
        await store.close()
    table("The Redis ledger: one ask of a call that must wait, with the queue behind it", rows)


def _runner(client: Orchestrated) -> Callable[[], Awaitable[float]]:
    return lambda: client.run("three")
