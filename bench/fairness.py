"""`python -m bench --only fairness`: what fairness, concurrency keys and rate limits cost.

1. Per task and per call, against none set (same run, interleaved rounds): one-step tasks of a
   workflow with a concurrency key (100 key values, a cap never reached) against the same
   workflow without one; ten-step tasks whose every step takes a unit of a rate limit that always
   has units against the same steps with no limit. The difference in milliseconds per task (or per
   call), from the throughput at 32 tasks in flight.
2. Grants with a deep queue: 10,000 then 100,000 tasks queued over 1,000 concurrency keys (in the
   store, in this process); the time per grant (claim_task) at each depth. O(log n) per grant
   shows as a ratio near 1.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from bench.harness import Orchestrated, Proc, Stat, chain, fresh_store, start_orchestrator, throughput
from bench.report import REDIS, table
from mcp_sdk.proto import registry_pb2, registry_pb2_grpc, task_pb2
from mcp_server.engine.events import make_event, now
from mcp_server.engine.ports import QueueGroup
from mcp_server.state import open_store

IN_FLIGHT = 32
STEPS = 10


async def bench_fairness(plugin: Proc, quick: bool) -> None:
    rounds, tasks = (2, 200) if quick else (3, 600)
    for backend in ("redis", "sqlite"):
        store = fresh_store(backend, REDIS)
        orchestrator = start_orchestrator(store, [plugin.address])
        client = Orchestrated(orchestrator.address)
        try:
            rows = await _overheads(client, rounds, tasks)
        finally:
            await client.close()
            orchestrator.stop()
        table(f"Fairness and rate limits ({backend} store): cost against none set, {IN_FLIGHT} in flight", rows)
    depths = (2_000, 20_000) if quick else (10_000, 100_000)
    for backend in ("redis", "sqlite"):
        table(
            f"Fair queue ({backend} store): time per grant, tasks over 1,000 concurrency keys",
            await _deep_queue(fresh_store(backend, REDIS), depths),
        )


async def _overheads(client: Orchestrated, rounds: int, tasks: int) -> list[tuple[str, Stat | float | str, str]]:
    plain = chain("plain", 1)
    keyed = {**chain("keyed", 1), "concurrency": {"key": "input.k", "max_running": 100_000}}
    calls = chain("calls", STEPS)
    limited = chain("limited", STEPS)
    for child in limited["root"]["sequence"]["children"]:
        child["step"]["rate_limits"] = [{"key": "bench:free"}]
    for definition in (plain, keyed, calls, limited):
        await client.create(definition)
    registry = registry_pb2_grpc.ProtocolRegistryStub(client.channel)
    free = registry_pb2.RateLimit(key="bench:free", limit=1e9)
    free.period.FromSeconds(1)
    await registry.PutRateLimit(registry_pb2.PutRateLimitRequest(rate_limit=free))
    await asyncio.sleep(1.2)  # every replica learns the key is limited within a second

    counter = iter(range(10**9))

    def runner(workflow_id: str) -> Any:
        return lambda: client.run(workflow_id, {"k": f"key-{next(counter) % 100}"}, read="submit-watch")

    measured = {name: Stat() for name in ("plain", "keyed", "calls", "limited")}
    for name in measured:  # warm up
        await throughput(runner(name), IN_FLIGHT, IN_FLIGHT * 2)
    for _ in range(rounds):  # interleaved: the machine's drift falls on all alike
        for name, stat in measured.items():
            stat.runs.append(1000 / await throughput(runner(name), IN_FLIGHT, tasks))
    key_cost = measured["keyed"].median - measured["plain"].median
    call_cost = (measured["limited"].median - measured["calls"].median) / STEPS
    return [
        ("one step, no concurrency key: ms per task", measured["plain"], "queued fairly across owners (always)"),
        ("one step, concurrency key: ms per task", measured["keyed"], f"{key_cost:+.3f} ms per task (target < 0.3)"),
        (f"{STEPS} steps, no rate limit: ms per task", measured["calls"], ""),
        (
            f"{STEPS} steps, a rate limit with units free: ms per task",
            measured["limited"],
            f"{call_cost:+.3f} ms per call (target < 0.3)",
        ),
    ]


async def _deep_queue(url: str, depths: tuple[int, ...]) -> list[tuple[str, Stat | float | str, str]]:
    store = await open_store(url)
    rows: list[tuple[str, Stat | float | str, str]] = []
    try:
        queued = 0
        per_grant: dict[int, Stat] = {}
        for depth in depths:
            queued = await _fill(store, queued, depth)
            stat = Stat()
            for _ in range(5):
                started = time.perf_counter()
                for _ in range(200):
                    claimed = await store.queue.claim_task("bench", 600)
                    assert claimed is not None
                stat.runs.append((time.perf_counter() - started) * 1000 / 200)
                queued -= 200
            per_grant[depth] = stat
        first, last = depths[0], depths[-1]
        for depth, stat in per_grant.items():
            note = (
                "" if depth == first else f"{stat.median / per_grant[first].median:.2f}x at {first:,} (O(log n): ~1x)"
            )
            rows.append((f"{depth:,} queued: ms per grant", stat, note))
        del last
    finally:
        await store.close()
    return rows


async def _fill(store: Any, queued: int, depth: int) -> int:
    """Queue tasks until `depth` are queued, spread over 1,000 keys (capped, never reached)."""
    batch = []
    while queued < depth:
        task = task_pb2.Task(
            task_id=uuid.uuid4().hex,
            workflow_id="deep",
            workflow_version=1,
            status=task_pb2.TASK_STATUS_PENDING,
            create_time=now(),
            last_sequence=1,
            owner="bench",
        )
        group = QueueGroup.of_key("deep", f"key-{queued % 1000}", 1_000_000)
        batch.append(
            store.queue.create_task(task, make_event(task.task_id, 1, task_pb2.TASK_EVENT_TYPE_QUEUED), group=group)
        )
        queued += 1
        if len(batch) == 200:
            await asyncio.gather(*batch)
            batch = []
    await asyncio.gather(*batch)
    return queued
