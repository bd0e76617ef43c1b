"""`python -m bench --only reruns`: what starting a rerun costs.

A finished task of 201 steps is rerun from its last step, so the rerun keeps 200 steps; the
RerunTask call (from the request to its answer: the rerun stored with what it keeps, and queued
or started) is measured against a SubmitTask call with the same input, in the same run and
interleaved with it. Twice: with small step outputs (inline in the step records) and with an
output of 70 KB per step (above the inline limit: each a stored value, which the rerun shares
by reference instead of copying). Between samples each task is followed to its end, so that
no run overlaps a measured call.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench.harness import Orchestrated, Proc, Stat, chain, fresh_store, start_orchestrator
from bench.report import REDIS, table
from mcp_sdk.proto import task_pb2

KEPT = 200
LARGE = 70 * 1024


async def bench_reruns(plugin: Proc, quick: bool) -> None:
    samples = 10 if quick else 30
    for backend in ("redis", "sqlite"):
        store = fresh_store(backend, REDIS)
        orchestrator = start_orchestrator(store, [plugin.address])
        client = Orchestrated(orchestrator.address)
        rows: list[tuple[str, Stat | float | str, str]] = []
        try:
            for label, protocol, data in (
                ("small outputs", "echo", {"n": 1}),
                ("70 KB outputs", "stamp", {"pad": "x" * LARGE}),
            ):
                rows += await _compare(client, label, protocol, data, samples)
        finally:
            await client.close()
            orchestrator.stop()
        table(f"Reruns ({backend} store): RerunTask keeping {KEPT} steps vs SubmitTask", rows)


async def _compare(
    client: Orchestrated, label: str, protocol: str, data: dict[str, Any], samples: int
) -> list[tuple[str, Stat | float | str, str]]:
    long_id, short_id = f"long-{protocol}", f"short-{protocol}"
    await client.create(chain(long_id, KEPT + 1, protocol))
    await client.create(chain(short_id, 1, protocol))
    original = await _submit(client, long_id, data)
    await _until_done(client, original)
    for _ in range(3):  # warm up both paths
        await _until_done(client, await _submit(client, short_id, data))
        await _until_done(client, await _rerun(client, original))
    submitted, rerun = Stat(), Stat()
    for _ in range(samples):  # interleaved, so the drift of the machine falls on both alike
        started = time.perf_counter()
        task_id = await _submit(client, short_id, data)
        submitted.runs.append((time.perf_counter() - started) * 1000)
        await _until_done(client, task_id)
        started = time.perf_counter()
        task_id = await _rerun(client, original)
        rerun.runs.append((time.perf_counter() - started) * 1000)
        await _until_done(client, task_id)
    return [
        (f"{label}: SubmitTask, ms", submitted, "a new task with the same input"),
        (
            f"{label}: RerunTask keeping {KEPT} steps, ms",
            rerun,
            f"{rerun.median / submitted.median:.2f}x SubmitTask (target < 3x)",
        ),
    ]


async def _submit(client: Orchestrated, workflow_id: str, data: dict[str, Any]) -> str:
    request = task_pb2.SubmitTaskRequest(workflow_id=workflow_id)
    request.input_data.update(data)
    return str((await client.tasks.SubmitTask(request)).task.task_id)


async def _rerun(client: Orchestrated, task_id: str) -> str:
    request = task_pb2.RerunTaskRequest(task_id=task_id, from_step_path=f"root/s{KEPT}")
    return str((await client.tasks.RerunTask(request)).task.task_id)


async def _until_done(client: Orchestrated, task_id: str) -> None:
    async with asyncio.timeout(300):
        async for message in client.tasks.WatchTaskEvents(task_pb2.WatchTaskRequest(task_id=task_id)):
            if message.events[-1].type == task_pb2.TASK_EVENT_TYPE_COMPLETED:
                return
