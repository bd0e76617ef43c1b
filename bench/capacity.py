"""Per-component costs for the capacity model in docs/performance.md: CPU of the orchestrator
and of Redis, and Redis commands, per task, per step and per watcher, from chains of 3 and 10
no-op steps run with and without a watcher each. Then what 1,000 and 10,000 tasks/s of
5-step workflows would need."""

from __future__ import annotations

import asyncio
import uuid

import redis as redis_sync

from bench.chains import redis_pid
from bench.harness import CpuMeter, Orchestrated, Proc, chain, start_orchestrator
from bench.report import REDIS, table
from mcp_sdk.proto import task_pb2

USABLE = 0.7  # run a core at 70% at most: headroom for bursts and recovery


def commands(url: str) -> int:
    client = redis_sync.Redis.from_url(url)
    try:
        return sum(int(v["calls"]) for v in client.info("commandstats").values())
    finally:
        client.close()


async def run_batch(client: Orchestrated, workflow_id: str, count: int, watch: bool) -> None:
    """`count` tasks, 64 in flight, each submitted and followed to its end in one
    SubmitAndWatchTask stream, or only submitted (then waited for through ListTasks)."""
    semaphore = asyncio.Semaphore(64)

    async def one() -> None:
        async with semaphore:
            if watch:
                await client.run(workflow_id, read="submit-watch")
            else:
                await client.tasks.SubmitTask(task_pb2.SubmitTaskRequest(workflow_id=workflow_id))

    await asyncio.gather(*(one() for _ in range(count)))
    if not watch:
        request = task_pb2.ListTasksRequest(
            page_size=1, workflow_id=workflow_id, statuses=[task_pb2.TASK_STATUS_PENDING, task_pb2.TASK_STATUS_RUNNING]
        )
        while (await client.tasks.ListTasks(request)).total_size:
            await asyncio.sleep(0.05)


async def bench_capacity(plugin: Proc, quick: bool) -> None:
    count = 300 if quick else 1000
    orchestrator = start_orchestrator(f"{REDIS}?prefix=bench:{uuid.uuid4().hex[:8]}:", [plugin.address])
    client = Orchestrated(orchestrator.address)
    redis = redis_pid(REDIS)
    costs: dict[tuple[int, bool], tuple[float, float, float]] = {}
    try:
        for steps in (3, 10):
            await client.create(chain(f"c{steps}", steps))
            await client.run(f"c{steps}")
        for _ in range(1 if quick else 2):  # alternate, so the drift of the machine falls on all alike
            for steps in (3, 10):
                for watch in (True, False):
                    meter = CpuMeter([orchestrator.process.pid, redis])
                    before = commands(REDIS)
                    meter.start()
                    await run_batch(client, f"c{steps}", count, watch)
                    used = meter.stop()
                    ops = (commands(REDIS) - before) / count
                    # background loops (leases, polls) are included, as they would be in production
                    costs[(steps, watch)] = (used[0] * 1000 / count, used[1] * 1000 / count, ops)
    finally:
        await client.close()
        orchestrator.stop()
    rows = []
    for (steps, watch), (orch, red, ops) in sorted(costs.items()):
        rows.append(
            (
                f"{steps}-step task, {'watched' if watch else 'not watched'}: orchestrator CPU ms",
                f"{orch:.2f}",
                f"redis CPU {red:.3f} ms, {ops:.1f} redis commands (in scripts too)",
            )
        )
    per_step = (costs[(10, False)][0] - costs[(3, False)][0]) / 7
    per_task = costs[(3, False)][0] - 3 * per_step
    per_watcher = ((costs[(3, True)][0] - costs[(3, False)][0]) + (costs[(10, True)][0] - costs[(10, False)][0])) / 2
    redis_step = (costs[(10, False)][1] - costs[(3, False)][1]) / 7
    redis_task = costs[(3, False)][1] - 3 * redis_step
    redis_watch = ((costs[(3, True)][1] - costs[(3, False)][1]) + (costs[(10, True)][1] - costs[(10, False)][1])) / 2
    five = per_task + 5 * per_step + per_watcher
    five_redis = redis_task + 5 * redis_step + redis_watch
    rows += [
        ("orchestrator CPU ms: per task (fixed part)", f"{per_task:.2f}", ""),
        ("orchestrator CPU ms: per step", f"{per_step:.3f}", ""),
        ("orchestrator CPU ms: per watcher (a whole task's events)", f"{per_watcher:.3f}", ""),
        (
            "redis CPU ms: per task / per step / per watcher",
            f"{redis_task:.3f}",
            f"{redis_step:.3f} / {redis_watch:.3f}",
        ),
        (
            "5-step task, watched: orchestrator CPU ms",
            f"{five:.2f}",
            f"one core at {USABLE:.0%}: {USABLE * 1000 / five:.0f} tasks/s",
        ),
        (
            "5-step task, watched: redis CPU ms",
            f"{five_redis:.3f}",
            f"one Redis core at {USABLE:.0%}: {USABLE * 1000 / five_redis:.0f} tasks/s",
        ),
    ]
    for rate in (1_000, 10_000):
        replicas = rate * five / 1000 / USABLE
        shards = rate * five_redis / 1000 / USABLE
        rows.append(
            (
                f"{rate:,} tasks/s of 5-step workflows: orchestrator cores (replicas)",
                f"{replicas:.1f}",
                f"redis shards (masters): {shards:.1f}",
            )
        )
    table("Capacity model inputs (one orchestrator, redis store, 64 in flight)", rows)
