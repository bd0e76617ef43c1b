"""`python -m bench --only bulk`: how fast bulk actions cancel and rerun many tasks, against the
client-side passes of the SDK (`cancel_tasks`, `rerun_tasks`: ListTasks pages and one call per
task, 8 at a time, what `mcp task cancel|rerun --status` do) on the same tasks, per store.

Cancel: N tasks queued behind a replica kept busy by a long task (one slot), cancelled by a
filter on the workflow. Rerun: N failed tasks rerun by a filter on FAILED (the reruns fail again,
and are not selected again). Reported: seconds until every task was acted on (the action's end,
or the pass's), tasks per second, and the ratio of the action to the pass.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from bench.harness import Proc, fresh_store, start_orchestrator
from bench.report import REDIS, table
from mcp_sdk.client import Client, task_selection
from mcp_sdk.errors import TaskFailed

HOLD = {"id": "h", "step": {"protocol": "sleep", "input": "{'ms': 600000}"}}


async def bench_bulk(plugin: Proc, quick: bool) -> None:
    count = 500 if quick else 2000
    rows: list[tuple[str, float | str, str]] = []
    for backend in ("redis", "sqlite"):
        store = fresh_store(backend, REDIS)
        orchestrator = start_orchestrator(
            store, [plugin.address], MCP_LIMIT_MAX_TASKS_IN_FLIGHT="1", MCP_LIMIT_MAX_QUEUED_PER_OWNER="0"
        )
        try:
            async with Client(orchestrator.address, timeout=60) as client:
                rows += await _cancels(client, backend, count)
                rows += await _reruns(client, backend, count)
        finally:
            orchestrator.stop()
    table(f"Bulk actions against the SDK's passes: {count} tasks each, one replica", rows)


async def _submit_many(client: Client, workflow_id: str, count: int) -> list[str]:
    gate = asyncio.Semaphore(64)

    async def one() -> str:
        async with gate:
            return (await client.submit(workflow_id, {})).task_id

    return list(await asyncio.gather(*(one() for _ in range(count))))


async def _cancels(client: Client, backend: str, count: int) -> list[tuple[str, float | str, str]]:
    hold_id = f"hold-{uuid.uuid4().hex[:6]}"
    await client.create_workflow({"workflow_id": hold_id, "root": HOLD})
    hold = await client.submit(hold_id, {})
    seconds = {}
    for way in ("pass", "action"):
        workflow_id = f"queued-{way}-{uuid.uuid4().hex[:6]}"
        await client.create_workflow({"workflow_id": workflow_id, "root": {"id": "e", "step": {"protocol": "echo"}}})
        await _submit_many(client, workflow_id, count)
        started = time.perf_counter()
        if way == "pass":
            done = len([o async for o in client.cancel_tasks(workflow_id=workflow_id) if o.error is None])
        else:
            action = await client.start_bulk_action("cancel", task_selection(workflow_id=workflow_id))
            done = (await client.wait_bulk_action(action.action_id, poll=0.05)).succeeded
        seconds[way] = time.perf_counter() - started
        assert done == count, (way, done)
    await client.cancel(hold.task_id)
    return _rows(backend, "cancel queued tasks", count, seconds)


async def _reruns(client: Client, backend: str, count: int) -> list[tuple[str, float | str, str]]:
    seconds = {}
    for way in ("pass", "action"):
        workflow_id = f"failing-{way}-{uuid.uuid4().hex[:6]}"
        failing = {"id": "f", "step": {"protocol": "fail", "input": "{'code': 'INVALID_ARGUMENT'}"}}
        await client.create_workflow({"workflow_id": workflow_id, "root": failing})
        for task_id in await _submit_many(client, workflow_id, count):
            try:
                await client.result(task_id)
            except TaskFailed:
                pass
        started = time.perf_counter()
        if way == "pass":
            done = len([o async for o in client.rerun_tasks(workflow_id=workflow_id) if o.error is None])
        else:
            selection = task_selection(workflow_id=workflow_id, statuses=["TASK_STATUS_FAILED"])
            action = await client.start_bulk_action("rerun", selection)
            done = (await client.wait_bulk_action(action.action_id, poll=0.05)).succeeded
        seconds[way] = time.perf_counter() - started
        assert done == count, (way, done)
    return _rows(backend, "rerun failed tasks", count, seconds)


def _rows(backend: str, what: str, count: int, seconds: dict[str, float]) -> list[tuple[str, float | str, str]]:
    return [
        (f"{backend}: {what}, the SDK's pass, s", round(seconds["pass"], 2), f"{count / seconds['pass']:.0f}/s"),
        (
            f"{backend}: {what}, a bulk action, s",
            round(seconds["action"], 2),
            f"{count / seconds['action']:.0f}/s; {seconds['action'] / seconds['pass']:.2f}x the pass's time",
        ),
    ]
