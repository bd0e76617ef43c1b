"""State layout: what a step costs as a run grows, what long and large runs cost to read back,
and how listing scales (issue 13). Bytes written are the growth of a private Redis's
append-only file, the literal bytes the store persists; every figure is per step."""

from __future__ import annotations

import asyncio
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import redis as redis_sync
from google.protobuf import struct_pb2

from bench.harness import Orchestrated, Proc, Stat, chain, free_port, fresh_store, percentile, start_orchestrator
from bench.report import table
from mcp_sdk.proto import task_pb2
from mcp_server.engine.events import make_event, now
from mcp_server.state import open_store
from tests.support.redis_server import start_redis_server

PAYLOADS = {"100 B": 100, "10 KB": 10_000, "100 KB": 100_000}
LENGTHS = (10, 200)


def start_aof_redis() -> tuple[subprocess.Popen[bytes], str]:
    """A private Redis that appends every write to its AOF, and never rewrites it during a run."""
    port = free_port()
    directory = tempfile.mkdtemp(prefix="bench-redis-")
    process = start_redis_server(
        port, directory, "--appendonly", "yes", "--appendfsync", "no", "--auto-aof-rewrite-percentage", "0"
    )
    return process, f"redis://127.0.0.1:{port}/0"


def aof_bytes(url: str) -> int:
    client = redis_sync.Redis.from_url(url)
    try:
        return int(client.info("persistence")["aof_current_size"])
    finally:
        client.close()


async def per_step(
    client: Orchestrated, url: str, workflow_id: str, steps: int, payload: dict[str, Any]
) -> tuple[float, float]:
    """(bytes written per step, ms per step) of one run."""
    await asyncio.sleep(0.2)  # let the previous run's background writes land
    before = aof_bytes(url)
    seconds = await client.run(workflow_id, payload)
    await asyncio.sleep(0.2)
    return (aof_bytes(url) - before) / steps, seconds * 1000 / steps


async def bench_layout(plugin: Proc, quick: bool, baseline: Path | None = None) -> None:
    redis_process, url = start_aof_redis()
    try:
        builds = [("now", None)] + ([("before", baseline)] if baseline is not None else [])
        for label, code in builds:
            await _per_step_costs(plugin, url, label, code, quick)
        await _long_and_large(plugin, url, quick)
        await _listing(plugin, url, quick)
    finally:
        redis_process.terminate()
        redis_process.wait(timeout=10)


async def _per_step_costs(plugin: Proc, url: str, label: str, code: Path | None, quick: bool) -> None:
    orchestrator = start_orchestrator(
        f"{url}?prefix=bench:layout{uuid.uuid4().hex[:6]}:",
        [plugin.address],
        code=code,
        MCP_LIMIT_MAX_WORKFLOW_NODES="2000",
        MCP_LIMIT_MAX_INPUT_BYTES=str(2 * 1024 * 1024),
    )
    client = Orchestrated(orchestrator.address)
    for steps in LENGTHS:
        await client.create(chain(f"c{steps}", steps, "stamp"))
    rows: list[tuple[str, Stat | float | str, str]] = []
    try:
        for name, size in PAYLOADS.items():
            payload = {"text": "x" * size}
            written: dict[int, Stat] = {}
            timing: dict[int, Stat] = {}
            for steps in LENGTHS:
                runs = [await per_step(client, url, f"c{steps}", steps, payload) for _ in range(1 if quick else 3)]
                written[steps] = Stat([r[0] for r in runs])
                timing[steps] = Stat([r[1] for r in runs])
            grow = written[200].median / written[10].median
            slow = timing[200].median / timing[10].median
            rows += [
                (
                    f"{label} {name}: bytes written per step, 10 steps",
                    written[10],
                    f"{written[10].median / size:.2f}x the payload",
                ),
                (
                    f"{label} {name}: bytes written per step, 200 steps",
                    written[200],
                    f"{written[200].median / size:.2f}x the payload; {grow:.2f}x of at 10 steps",
                ),
                (f"{label} {name}: ms per step, 10 steps", timing[10], ""),
                (f"{label} {name}: ms per step, 200 steps", timing[200], f"{slow:.2f}x of at 10 steps"),
            ]
    finally:
        await client.close()
        orchestrator.stop()
    table(f"State layout ({label}): cost per step as a chain grows (stamp steps, redis store, AOF bytes)", rows)


async def _long_and_large(plugin: Proc, url: str, quick: bool) -> None:
    rows: list[tuple[str, Stat | float | str, str]] = []
    for backend in ("redis", "sqlite"):
        store = fresh_store(backend, url)
        orchestrator = start_orchestrator(store, [plugin.address], MCP_LIMIT_MAX_WORKFLOW_NODES="2000")
        client = Orchestrated(orchestrator.address)
        try:
            await client.create(chain("thousand", 1000))
            await client.create(chain("big", 200, "stamp"))
            for workflow_id, payload, name in (
                ("thousand", {"n": 1}, "1,000-step sequence"),
                ("big", {"text": "x" * 100_000}, "200-step chain of 100 KB outputs"),
            ):
                ran = await client.run(workflow_id, payload)
                read = await _read_back(client)
                rows += [
                    (f"{backend}: {name}, run s", f"{ran:.2f}", "submit -> terminal event"),
                    (
                        f"{backend}: {name}, read back ms",
                        f"{read * 1000:.1f}",
                        "GetTask + every ListTaskSteps page + ReadValue",
                    ),
                ]
        finally:
            await client.close()
            orchestrator.stop()
    table("State layout: long and large runs complete and read back", rows)


async def _read_back(client: Orchestrated) -> float:
    started = time.perf_counter()
    latest = (await client.tasks.ListTasks(task_pb2.ListTasksRequest(page_size=1))).tasks[0]
    await client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=latest.task_id))
    token, seen = "", 0
    while True:
        page = await client.tasks.ListTaskSteps(
            task_pb2.ListTaskStepsRequest(task_id=latest.task_id, page_token=token, page_size=500)
        )
        seen += len(page.steps)
        token = page.next_page_token
        if not token:
            break
    assert seen == latest.step_count, (seen, latest.step_count)
    data = b"".join([c.data async for c in client.tasks.ReadValue(task_pb2.ReadValueRequest(task_id=latest.task_id))])
    struct_pb2.Value.FromString(data)
    return time.perf_counter() - started


async def _listing(plugin: Proc, url: str, quick: bool) -> None:
    """One principal's 10 tasks among 100,000 of another's: ListTasks reads the owner index."""
    others = 20_000 if quick else 100_000
    prefix = f"bench:list{uuid.uuid4().hex[:6]}:"
    store = await open_store(f"{url}?prefix={prefix}")
    semaphore = asyncio.Semaphore(256)

    async def create(owner: str) -> None:
        async with semaphore:
            task = task_pb2.Task(
                task_id=uuid.uuid4().hex,
                workflow_id="w",
                workflow_version=1,
                owner=owner,
                create_time=now(),
                status=task_pb2.TASK_STATUS_PENDING,
                last_sequence=1,
            )
            await store.queue.create_task(task, make_event(task.task_id, 1, task_pb2.TASK_EVENT_TYPE_QUEUED))

    started = time.perf_counter()
    await asyncio.gather(*(create("ann") for _ in range(10)))
    await asyncio.gather(*(create("ben") for _ in range(others)))
    filled = time.perf_counter() - started
    await store.close()
    # This replica claims nothing (0 in flight): the tasks stay queued and listed.
    orchestrator = start_orchestrator(f"{url}?prefix={prefix}", [plugin.address], MCP_LIMIT_MAX_TASKS_IN_FLIGHT="0")
    client = Orchestrated(orchestrator.address)
    try:
        mine = await _latencies(client, task_pb2.ListTasksRequest(owner="ann", page_size=10), expect=10)
        first_page = await _latencies(client, task_pb2.ListTasksRequest(page_size=50), expect=50)
        pending = await _latencies(
            client, task_pb2.ListTasksRequest(page_size=50, statuses=[task_pb2.TASK_STATUS_PENDING]), expect=50
        )
    finally:
        await client.close()
        orchestrator.stop()
    table(
        f"State layout: ListTasks among {others:,} tasks (redis store, {filled:.0f} s to create them)",
        [
            (
                "one principal's 10 tasks, p50 ms",
                f"{percentile(mine, 0.5):.2f}",
                f"p99 {percentile(mine, 0.99):.2f}; target < 5 ms",
            ),
            (
                "first page of 50, no filter, p50 ms",
                f"{percentile(first_page, 0.5):.2f}",
                f"p99 {percentile(first_page, 0.99):.2f}",
            ),
            (
                "first page of 50 PENDING, p50 ms",
                f"{percentile(pending, 0.5):.2f}",
                f"p99 {percentile(pending, 0.99):.2f}",
            ),
        ],
    )


async def _latencies(
    client: Orchestrated, request: task_pb2.ListTasksRequest, expect: int, samples: int = 200
) -> list[float]:
    found = []
    for _ in range(samples):
        started = time.perf_counter()
        reply = await client.tasks.ListTasks(request)
        found.append((time.perf_counter() - started) * 1000)
        assert len(reply.tasks) == expect, len(reply.tasks)
    return found
