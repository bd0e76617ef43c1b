"""`python -m bench --only queue-timeouts`: how promptly queued tasks past their queue deadline end.

One replica runs one task at a time and is kept busy by a long one; N tasks with a queue timeout
are submitted behind it (64 submissions in flight), so every one of them waits in the queue past
its deadline. The due-time sweep (every replica, every 250 ms) ends them CANCELLED. Reported,
per store: how late each ended after its deadline (the task's end_time less its queue_deadline),
and how many the sweep ended per second once they were due.
"""

from __future__ import annotations

import asyncio
import time

from bench.harness import Orchestrated, Proc, Stat, fresh_store, start_orchestrator
from bench.report import REDIS, table
from mcp_sdk.proto import task_pb2

TIMEOUT_S = 2.0


async def bench_queue_timeouts(plugin: Proc, quick: bool) -> None:
    count = 1000 if quick else 5000
    rows: list[tuple[str, Stat | float | str, str]] = []
    for backend in ("redis", "sqlite"):
        store = fresh_store(backend, REDIS)
        orchestrator = start_orchestrator(store, [plugin.address], MCP_LIMIT_MAX_TASKS_IN_FLIGHT="1")
        client = Orchestrated(orchestrator.address)
        try:
            rows += await _rows(client, backend, count)
        finally:
            await client.close()
            orchestrator.stop()
    table(f"Queue timeouts: {count} tasks queued behind a busy replica, each {TIMEOUT_S:g} s", rows)


async def _rows(client: Orchestrated, backend: str, count: int) -> list[tuple[str, Stat | float | str, str]]:
    await client.create(
        {"workflow_id": "hold", "root": {"id": "h", "step": {"protocol": "sleep", "input": "{'ms': 600000}"}}}
    )
    await client.create({"workflow_id": "quick", "root": {"id": "q", "step": {"protocol": "echo"}}})
    hold = (await client.tasks.SubmitTask(task_pb2.SubmitTaskRequest(workflow_id="hold"))).task
    semaphore = asyncio.Semaphore(64)

    async def submit() -> None:
        request = task_pb2.SubmitTaskRequest(workflow_id="quick")
        request.queue_timeout.FromNanoseconds(int(TIMEOUT_S * 1e9))
        async with semaphore:
            await client.tasks.SubmitTask(request)

    started = time.monotonic()
    await asyncio.gather(*(submit() for _ in range(count)))
    submitting = time.monotonic() - started
    ended = await _until_all_cancelled(client, count)
    await client.tasks.CancelTask(task_pb2.CancelTaskRequest(task_id=hold.task_id))
    late_ms = sorted((t.end_time.ToNanoseconds() - t.queue_deadline.ToNanoseconds()) / 1e6 for t in ended)
    first_due = min(t.queue_deadline.ToNanoseconds() for t in ended)
    last_end = max(t.end_time.ToNanoseconds() for t in ended)
    unstarted = sum(1 for t in ended if not t.HasField("start_time") and t.error.message.startswith("QUEUE_TIMEOUT"))
    return [
        (f"{backend}: submitting them, s", round(submitting, 2), f"{count / submitting:.0f}/s"),
        (f"{backend}: ended after their deadline, p50 ms", round(late_ms[len(late_ms) // 2], 1), ""),
        (f"{backend}: ended after their deadline, p99 ms", round(late_ms[int(len(late_ms) * 0.99)], 1), ""),
        (f"{backend}: ended after their deadline, max ms", round(late_ms[-1], 1), ""),
        (
            f"{backend}: ended per second once due",
            round(count / max((last_end - first_due) / 1e9, 1e-3)),
            f"{unstarted} of {count} unstarted, QUEUE_TIMEOUT",
        ),
    ]


async def _until_all_cancelled(client: Orchestrated, count: int) -> list[task_pb2.Task]:
    """Every cancelled task of `quick`, once there are `count` of them."""
    async with asyncio.timeout(600):
        while True:
            found: list[task_pb2.Task] = []
            token = ""
            while True:
                page = await client.tasks.ListTasks(
                    task_pb2.ListTasksRequest(
                        workflow_id="quick",
                        statuses=[task_pb2.TASK_STATUS_CANCELLED],
                        page_size=1000,
                        page_token=token,
                    )
                )
                found += page.tasks
                token = page.next_page_token
                if not token:
                    break
            if len(found) >= count:
                return found
            await asyncio.sleep(0.5)
