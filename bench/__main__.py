"""`make bench` / `python -m bench [--quick]`: the figures of docs/performance.md.

Every figure is the median of several runs (min and max beside it) and, where it has a floor,
its ratio to the floor measured in the same run. Results go to bench/results/latest.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import redis as redis_sync
import redis.asyncio as aioredis

from bench.admission import bench_admission
from bench.baseline import prepare
from bench.bulk import bench_bulk
from bench.bursts import bench_bursts
from bench.call_cost import bench_calls
from bench.capacity import bench_capacity
from bench.chains import bench_chains, fanout_floor
from bench.cluster import bench_cluster
from bench.console import bench_console
from bench.contract import bench_contract
from bench.events import bench_events
from bench.fairness import bench_fairness
from bench.harness import (
    Orchestrated,
    Proc,
    Stat,
    chain,
    percentile,
    repeat,
    start_orchestrator,
    start_plugin,
    throughput,
)
from bench.layout import bench_layout
from bench.queue_timeouts import bench_queue_timeouts
from bench.report import REDIS, RESULTS, table
from bench.reruns import bench_reruns
from bench.schedules import bench_schedules
from bench.steps_cost import bench_cache
from bench.waits import bench_waits
from mcp_sdk.proto import protocol_pb2, protocol_pb2_grpc, task_pb2
from mcp_server.engine.values import dict_to_struct


# ---- floors ---------------------------------------------------------------------------------
async def floor_chain(stub: protocol_pb2_grpc.ProtocolServiceStub, steps: int, store: aioredis.Redis | None) -> float:
    """A client feeding each no-op output into the next call; optionally one pipelined Redis
    write per step (a ~2 KB snapshot and an event), as the orchestrator does."""
    started = time.perf_counter()
    value = dict_to_struct({"x": 1, "pad": "p" * 64})
    key = uuid.uuid4().hex
    for i in range(steps):
        response = await stub.Execute(
            protocol_pb2.ExecuteRequest(
                protocol="echo", input=value, context=protocol_pb2.ExecutionContext(task_id=key, step_path=f"s{i}")
            )
        )
        value = response.output
        if store is not None:
            async with store.pipeline(transaction=True) as pipe:
                pipe.set(f"bench:snap:{key}", b"s" * 2048)
                pipe.xadd(f"bench:ev:{key}", {"e": b"e" * 200})
                await pipe.execute()
    return time.perf_counter() - started


async def latency_samples(run: Any, samples: int) -> list[float]:
    return [await run() for _ in range(samples)]


async def bench_floors_and_orchestrated(plugin: Proc, quick: bool, baseline: Path | None = None) -> None:
    samples, runs, total = (40, 3, 128) if quick else (150, 3, 640)
    channel = grpc.aio.insecure_channel(plugin.address)
    stub = protocol_pb2_grpc.ProtocolServiceStub(channel)
    store = aioredis.from_url(REDIS)
    rows: list[tuple[str, Stat | float | str, str]] = []

    async def p50(fn: Any) -> float:
        return percentile(await latency_samples(fn, samples), 0.5) * 1000

    floor = await repeat(runs, lambda: p50(lambda: floor_chain(stub, 3, None)))
    floor_redis = await repeat(runs, lambda: p50(lambda: floor_chain(stub, 3, store)))
    floor10 = await repeat(runs, lambda: p50(lambda: floor_chain(stub, 10, store)))
    floor_tps = await repeat(runs, lambda: throughput(lambda: floor_chain(stub, 3, store), 64, total))
    rows += [
        ("floor: 3-step chain, bare grpc.aio, p50 ms", floor, ""),
        ("floor+redis: 3-step chain + 1 pipelined write/step, p50 ms", floor_redis, ""),
        ("floor+redis: 10-step chain, p50 ms", floor10, ""),
        ("floor+redis: chains/s, 64 in flight", floor_tps, ""),
    ]
    for backend in ("redis", "sqlite"):
        rows += await orchestrated_rows(backend, plugin, samples, runs, total, floor_redis, floor10, floor_tps)
    if baseline is not None:
        rows += await orchestrated_rows(
            "redis", plugin, samples, runs, total, floor_redis, floor10, floor_tps, code=baseline
        )
    table("Latency and throughput (3-step no-op chain)", rows)
    await store.aclose()
    await channel.close()


async def orchestrated_rows(
    backend: str,
    plugin: Proc,
    samples: int,
    runs: int,
    total: int,
    floor_redis: Stat,
    floor10: Stat,
    floor_tps: Stat,
    code: Path | None = None,
) -> list[tuple[str, Stat | float | str, str]]:
    url = (
        f"{REDIS}?prefix=bench:{uuid.uuid4().hex[:8]}:"
        if backend == "redis"
        else f"sqlite:///{tempfile.mkdtemp()}/bench.db"
    )
    orchestrator = start_orchestrator(url, [plugin.address], code=code)
    backend = f"{backend} (before: {code.name[:8]})" if code is not None else backend
    client = Orchestrated(orchestrator.address)
    await client.create(chain("three", 3))
    await client.create(chain("ten", 10))
    await client.run("three")
    all_samples: list[float] = []

    async def p50_of(workflow_id: str, keep: bool = False) -> float:
        got = await latency_samples(lambda: client.run(workflow_id), samples)
        if keep:
            all_samples.extend(got)
        return percentile(got, 0.5) * 1000

    lat = await repeat(runs, lambda: p50_of("three", keep=True))
    p99 = percentile(all_samples, 0.99) * 1000
    ten = await repeat(runs, lambda: p50_of("ten"))
    tps = await repeat(runs, lambda: throughput(lambda: client.run("three"), 64, total))
    overhead = Stat([(t - f) / 10 for t, f in zip(ten.runs, floor10.runs)])
    rows: list[tuple[str, Stat | float | str, str]] = [
        (f"{backend}: 3-step task, submit->result p50 ms", lat, f"{lat.median / floor_redis.median:.2f}x floor+redis"),
        (f"{backend}: 3-step task p99 ms", f"{p99:.3f}", ""),
        (f"{backend}: tasks/s, 64 in flight", tps, f"{tps.median / floor_tps.median:.0%} of floor+redis"),
        (f"{backend}: 10-step task p50 ms", ten, ""),
        (f"{backend}: per-step overhead above floor+redis, ms", overhead, "(10-step task - 10-step floor) / 10"),
    ]
    if backend.startswith("redis"):
        writes, reads = await round_trips_per_step(client)
        rows.append(
            (f"{backend}: orchestrator writes (EVALSHA) per step, 10-step task", f"{writes:.2f}", "atomic checkpoints")
        )
        rows.append((f"{backend}: watcher reads (XREAD) per step, 10-step task", f"{reads:.2f}", "one watcher"))
    await client.close()
    orchestrator.stop()
    return rows


async def round_trips_per_step(client: Orchestrated) -> tuple[float, float]:
    """Redis round trips of one 10-step task, per step: the orchestrator's atomic writes and
    the watcher's reads. Commands inside the Lua scripts are not round trips and not counted."""
    sync = redis_sync.Redis.from_url(REDIS)

    def calls(command: str) -> int:
        return int(sync.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))

    await asyncio.sleep(0.5)
    before = calls("evalsha"), calls("xread")
    await client.run("ten")
    after = calls("evalsha"), calls("xread")
    sync.close()
    return (after[0] - before[0]) / 10, (after[1] - before[1]) / 10


# ---- fan-out --------------------------------------------------------------------------------
async def bench_fanout(plugin: Proc, quick: bool) -> None:
    orchestrator = start_orchestrator(f"sqlite:///{tempfile.mkdtemp()}/fan.db", [plugin.address])
    on_redis = start_orchestrator(f"{REDIS}?prefix=bench:{uuid.uuid4().hex[:8]}:", [plugin.address])
    client, redis_client = Orchestrated(orchestrator.address), Orchestrated(on_redis.address)
    branches = [{"id": f"b{i}", "step": {"protocol": "sleep", "input": "{'ms': 100}"}} for i in range(100)]
    for each in (client, redis_client):
        await each.create(
            {"workflow_id": "fan", "root": {"id": "fan", "parallel": {"children": branches, "max_concurrency": 100}}}
        )
    items = 300 if quick else 1000
    await client.create(
        {
            "workflow_id": "map",
            "root": {
                "id": "m",
                "map": {
                    "items": "input.items.map(i, {'ms': 100, 'i': i})",
                    "max_concurrency": 100,
                    "body": {"id": "nap", "step": {"protocol": "sleep"}},
                },
            },
        }
    )
    channel = grpc.aio.insecure_channel(plugin.address)
    stub = protocol_pb2_grpc.ProtocolServiceStub(channel)
    await fanout_floor(stub, 100, 100)
    await client.run("fan", read="run")  # warm them up
    await redis_client.run("fan", read="run")
    bare, fan_ms, fan_unary_ms, fan_redis_ms = Stat(), Stat(), Stat(), Stat()
    for _ in range(3 if quick else 9):  # rounds interleaved, so the drift of the machine falls on all alike
        bare.runs.append(await fanout_floor(stub, 100, 100))
        fan_ms.runs.append(await client.run("fan", read="submit-watch") * 1000)
        fan_unary_ms.runs.append(await client.run("fan", read="run") * 1000)
        fan_redis_ms.runs.append(await redis_client.run("fan", read="run") * 1000)
    await channel.close()
    await redis_client.close()
    on_redis.stop()
    mapped = await repeat(3, lambda: client.run("map", {"items": list(range(items))}))
    ideal = items / 100 * 0.1
    table(
        "Fan-out (plugin sleeps 100 ms per call)",
        [
            ("bare gRPC: 100 concurrent calls from a client, wall ms", bare, ""),
            (
                "parallel of 100 branches, sqlite, SubmitAndWatchTask: wall ms",
                fan_ms,
                f"{fan_ms.median / bare.median:.2f}x the bare gather",
            ),
            (
                "parallel of 100 branches, sqlite, RunTask: wall ms",
                fan_unary_ms,
                f"{fan_unary_ms.median / bare.median:.2f}x the bare gather",
            ),
            (
                "parallel of 100 branches, redis, RunTask: wall ms",
                fan_redis_ms,
                f"{fan_redis_ms.median / bare.median:.2f}x the bare gather",
            ),
            (
                f"map over {items} items, max_concurrency 100, sqlite: wall s",
                mapped,
                f"{mapped.median / ideal:.2f}x the {ideal:.1f} s floor",
            ),
        ],
    )
    await client.close()
    orchestrator.stop()


# ---- scale ----------------------------------------------------------------------------------
async def bench_scale(plugin: Proc, quick: bool) -> None:
    count = 2000 if quick else 10_000
    rows: list[tuple[str, Stat | float | str, str]] = []
    for label, env in (
        ("plugin calls over ExecuteMany", {}),
        ("every plugin call an Execute call", {"MCP_PLUGIN_CALL_STREAMS": "false"}),
    ):
        per_task, probes = await _tasks_in_flight(plugin, count, env)
        rows += [
            (f"{label}: orchestrator RSS growth per task in flight, KB", f"{per_task:.1f}", ""),
            (
                f"{label}: GetTask under that load, p50 / p99 ms (loop-lag proxy)",
                f"{percentile(probes, 0.5):.2f}",
                f"p99 {percentile(probes, 0.99):.2f}",
            ),
        ]
    measured = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.callmem",
        "--plugin",
        plugin.address,
        "--calls",
        str(count),
        stdout=asyncio.subprocess.PIPE,
    )
    floor = (await measured.communicate())[0].decode().split()[-1]
    rows.append(
        (
            "one pending unary gRPC call by itself, RSS per call, KB",
            floor,
            "what each waiting task holds when its calls are Execute calls",
        )
    )
    table(f"Scale: {count} tasks in flight on a slow plugin (redis store)", rows)


async def _tasks_in_flight(plugin: Proc, count: int, env: dict[str, str]) -> tuple[float, list[float]]:
    """Orchestrator RSS growth per task with `count` tasks waiting on a 2-minute step, and
    GetTask latencies meanwhile."""
    orchestrator = start_orchestrator(
        f"{REDIS}?prefix=bench:{uuid.uuid4().hex[:8]}:", [plugin.address], "bench", None, **env
    )
    client = Orchestrated(orchestrator.address)
    await client.create(
        {
            "workflow_id": "slow",
            "root": {"id": "wait", "step": {"protocol": "sleep", "input": "{'ms': 120000}", "timeout": "600s"}},
        }
    )
    await client.create(chain("probe", 1))
    await client.run("probe", read="run")
    await asyncio.sleep(1)
    rss_before = orchestrator.rss_kb()
    ids = []
    sem = asyncio.Semaphore(64)

    async def submit() -> None:
        async with sem:
            ids.append((await client.tasks.SubmitTask(task_pb2.SubmitTaskRequest(workflow_id="slow"))).task.task_id)

    await asyncio.gather(*(submit() for _ in range(count)))
    await asyncio.sleep(5)
    rss_after = orchestrator.rss_kb()
    probes = []
    for _ in range(50):
        started = time.perf_counter()
        await client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=ids[0]))
        probes.append((time.perf_counter() - started) * 1000)
    await client.close()
    orchestrator.stop()
    return (rss_after - rss_before) / count, probes


async def replica_throughput(plugin: Proc, replicas: int, total: int) -> Stat:
    url = f"{REDIS}?prefix=bench:{uuid.uuid4().hex[:8]}:"
    procs = [start_orchestrator(url, [plugin.address], replica=f"r{i}") for i in range(replicas)]
    clients = [Orchestrated(p.address) for p in procs]
    await clients[0].create(chain("three", 3))
    turn = 0

    async def run_one() -> float:
        nonlocal turn
        turn += 1
        return await clients[turn % replicas].run("three")

    result = await repeat(3, lambda: throughput(run_one, 64, total))
    for c in clients:
        await c.close()
    for p in procs:
        p.stop()
    return result


async def bench_replicas(plugin: Proc, quick: bool) -> None:
    total = 128 if quick else 640
    results = {replicas: await replica_throughput(plugin, replicas, total) for replicas in (1, 2)}
    table(
        "Scale-out: 3-step tasks/s with 64 in flight, replicas on one Redis (2 cores shared by all processes)",
        [
            ("one replica", results[1], ""),
            ("two replicas", results[2], f"{results[2].median / results[1].median:.2f}x one replica"),
        ],
    )


# ---- streaming ------------------------------------------------------------------------------
async def watch_delays(client: Orchestrated, watchers: int) -> list[float]:
    """Milliseconds from each event's write time to its arrival, over every watcher."""
    task = (await client.tasks.SubmitTask(task_pb2.SubmitTaskRequest(workflow_id="ticker"))).task
    delays: list[float] = []

    async def watch() -> None:
        async for event in client.tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=task.task_id)):
            if (
                event.type in (task_pb2.TASK_EVENT_TYPE_STEP_STARTED, task_pb2.TASK_EVENT_TYPE_STEP_COMPLETED)
                and event.sequence > 3
            ):
                delays.append((time.time() - event.time.ToNanoseconds() / 1e9) * 1000)

    await asyncio.gather(*(watch() for _ in range(watchers)))
    return delays


async def bench_streaming(plugin: Proc, quick: bool) -> None:
    orchestrator = start_orchestrator(f"{REDIS}?prefix=bench:{uuid.uuid4().hex[:8]}:", [plugin.address])
    client = Orchestrated(orchestrator.address)
    await client.create(chain("ticker", 20, "sleep", "{'ms': 20}"))
    watchers = 100
    stat_p50, stat_p99 = Stat(), Stat()
    for _ in range(3):
        delays = await watch_delays(client, watchers)
        stat_p50.runs.append(percentile(delays, 0.5))
        stat_p99.runs.append(percentile(delays, 0.99))
    table(
        f"Streaming: event time -> arrival at {watchers} watchers of one task (redis store)",
        [
            ("p50 ms", stat_p50, "includes the write-behind of started events"),
            ("p99 ms", stat_p99, ""),
        ],
    )
    await client.close()
    orchestrator.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(prog="bench")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument(
        "--only",
        action="append",
        help="chains, contract, calls, steps, fanout, streaming, replicas, scale, layout, capacity, admission, cluster,"
        " console, bursts, waits, events, reruns, fairness, schedules, cache, queue-timeouts, bulk",
    )
    parser.add_argument(
        "--baseline", help="also run this commit's server (e.g. HEAD~5) in the same run, where a suite compares"
    )
    parser.add_argument(
        "--variant", action="append", help='chains: also run the server with an environment, "NAME:VAR=VALUE,..."'
    )
    parser.add_argument(
        "--contract-plugin",
        choices=["python", "node"],
        default="python",
        help="contract: the contract-only plugin's language (bench/unary_plugin.py or .js)",
    )
    args = parser.parse_args()
    baseline = prepare(args.baseline) if args.baseline else None
    plugin = start_plugin()
    suites: dict[str, Callable[[Proc, bool], Awaitable[None]]] = {
        "chains": partial(bench_chains, baseline=baseline, variants=args.variant),
        "contract": partial(bench_contract, baseline=baseline, plugin_in=args.contract_plugin),
        "calls": bench_calls,
        "steps": partial(bench_floors_and_orchestrated, baseline=baseline),
        "fanout": bench_fanout,
        "streaming": bench_streaming,
        "replicas": bench_replicas,
        "scale": bench_scale,
        "capacity": bench_capacity,
        "admission": bench_admission,
        "cluster": bench_cluster,
        "layout": partial(bench_layout, baseline=baseline),
        "console": bench_console,
        "bursts": bench_bursts,
        "waits": bench_waits,
        "events": bench_events,
        "reruns": bench_reruns,
        "fairness": bench_fairness,
        "schedules": bench_schedules,
        "cache": bench_cache,
        "queue-timeouts": bench_queue_timeouts,
        "bulk": bench_bulk,
    }
    try:
        for name, suite in suites.items():
            if not args.only or name in args.only:
                await suite(plugin, args.quick)
    finally:
        plugin.stop()
        sync = redis_sync.Redis.from_url(REDIS)
        for key in [*sync.scan_iter("bench:*", count=1000)]:
            sync.delete(key)
        sync.close()
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "latest.json").write_text(json.dumps(RESULTS, indent=2))
    print(f"\nwrote {out / 'latest.json'}")


if __name__ == "__main__":
    asyncio.run(main())
