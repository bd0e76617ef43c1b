"""Bursts: many clients' calls arriving at once, as a batch job or a retry storm sends them.

1. Shedding: 3,000 ListTasks at once on one channel, the server at gRPC's own pending-call limit
   (1,000) and at ours (`MCP_MAX_PENDING_CALLS`, 20,000): how many are answered.
2. Backlog: N RunTask calls at once through the SDK (a 2-step echo chain each, the server at its
   default 1,000 tasks in flight, so most wait queued), on both stores: wall time, and server CPU
   per task; a per-task cost that grows with N is work done per waiting task.
"""

from __future__ import annotations

import asyncio
import collections
import tempfile
import time
import uuid

import grpc

from bench.harness import CpuMeter, Proc, Stat, chain, start_orchestrator
from bench.report import REDIS, table
from mcp_sdk.client import Client
from mcp_sdk.proto import task_pb2, task_pb2_grpc

DEFAULTS = {"MCP_LIMIT_MAX_TASKS_IN_FLIGHT": "1000", "MCP_LIMIT_MAX_CONCURRENCY": "256"}


async def answered_of_a_burst(limit: int, calls: int) -> int:
    server = start_orchestrator("sqlite://:memory:", [], "burst", None, MCP_MAX_PENDING_CALLS=str(limit))
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = task_pb2_grpc.TaskServiceStub(channel)

            async def one() -> str:
                try:
                    await stub.ListTasks(task_pb2.ListTasksRequest(page_size=1), timeout=60)
                    return "OK"
                except grpc.aio.AioRpcError as exc:
                    return str(exc.code().name)

            return collections.Counter(await asyncio.gather(*(one() for _ in range(calls))))["OK"]
    finally:
        server.stop()


async def run_burst(store: str, plugin: Proc, count: int) -> tuple[float, float, int]:
    """Wall seconds, server CPU ms per task, and how many results came back right."""
    server = start_orchestrator(store, [plugin.address], "burst", None, **DEFAULTS)
    try:
        async with Client(server.address) as client:
            await client.create_workflow(chain("burst", 2))
            meter = CpuMeter([server.process.pid])
            meter.start()
            started = time.perf_counter()
            results = await asyncio.gather(*(client.run("burst", {"i": i}, timeout=600) for i in range(count)))
            wall = time.perf_counter() - started
            cpu_ms = meter.stop()[0] * 1000 / count
        return wall, cpu_ms, sum(1 for i, r in enumerate(results) if r == {"i": i})
    finally:
        server.stop()


async def bench_bursts(plugin: Proc, quick: bool) -> None:
    calls = 1500 if quick else 3000
    rows: list[tuple[str, Stat | float | str, str]] = []
    for limit, name in ((1000, "gRPC's default (1,000)"), (20_000, "MCP_MAX_PENDING_CALLS default (20,000)")):
        got = await answered_of_a_burst(limit, calls)
        rows.append((f"{calls} ListTasks at once, limit {name}: answered", float(got), f"of {calls}"))
    table("Bursts: calls shed by gRPC's pending-call limit", rows)

    sizes = (1000, 3000) if quick else (3000, 10_000)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for store_name in ("SQLite", "Redis"):
            per_task: list[float] = []
            for count in sizes:
                store = (
                    f"sqlite:///{scratch}/burst-{count}.db"
                    if store_name == "SQLite"
                    else f"{REDIS}?prefix=bench:{uuid.uuid4().hex[:8]}:"
                )
                wall, cpu_ms, right = await run_burst(store, plugin, count)
                per_task.append(cpu_ms)
                note = f"{right} of {count} right; {count / wall:.0f} tasks/s"
                rows.append((f"{store_name}: {count} RunTask at once, wall s", Stat([wall]), note))
                rows.append((f"{store_name}: {count} RunTask at once, server CPU ms/task", Stat([cpu_ms]), ""))
            growth = f"{per_task[1] / per_task[0]:.2f}x"
            rows.append((f"{store_name}: server CPU per task, {sizes[1]} vs {sizes[0]} at once", growth, ""))
    table("Bursts: RunTask calls at once, most waiting queued", rows)
