"""The console's targets: the list page of 10,000 tasks answers its first page in under 200 ms,
and a task page shows a step's completion within 100 ms of its event.

An orchestrator process serves the console (on each store); 10,000 one-step tasks are run
through it; then the list pages (unfiltered, by status, by workflow, the next page) are fetched
over HTTP the way a browser would, each many times. The event-to-page figure is the time from a
step's event to the browser's DOM showing it, measured in Playwright by the browser test
(tests/console/test_console_browser.py, written to test-artifacts/console/step-latency-ms.json);
here the server's part of it is measured: event write time to its arrival on the SSE stream.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from datetime import datetime

import aiohttp

from bench.harness import Proc, Stat, chain, free_port, percentile, start_orchestrator
from bench.report import REDIS, table
from mcp_sdk import Client

TARGET_LIST_MS = 200.0
TARGET_EVENT_MS = 100.0


async def fill(client: Client, workflow_id: str, count: int, in_flight: int = 200) -> None:
    """Run `count` tasks of `workflow_id` to their end."""
    remaining = count

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            task = await client.submit(workflow_id, {"n": remaining})
            await client.result(task.task_id, timeout=120)

    await asyncio.gather(*(worker() for _ in range(in_flight)))


async def page_times(session: aiohttp.ClientSession, url: str, times: int) -> list[float]:
    samples = []
    for _ in range(times):
        started = time.perf_counter()
        async with session.get(url) as response:
            body = await response.text()
            assert response.status == 200, (url, response.status, body[:300])
        samples.append((time.perf_counter() - started) * 1000)
    return samples


async def sse_delays(session: aiohttp.ClientSession, url: str) -> list[float]:
    """Milliseconds from each STEP_COMPLETED event's write time to its arrival on the console's stream."""
    delays = []
    async with session.get(url) as response:
        async for raw in response.content:
            line = raw.decode().strip()
            if line.startswith("data: {") and '"STEP_COMPLETED"' in line:
                written = datetime.fromisoformat(json.loads(line[6:])["time"].replace("Z", "+00:00")).timestamp()
                delays.append((time.time() - written) * 1000)
    return delays


async def bench_console(plugin: Proc, quick: bool) -> None:
    count = 2_000 if quick else 10_000
    for store_name, store in (
        ("sqlite", f"sqlite:////tmp/bench-console-{uuid.uuid4().hex[:8]}.db"),
        ("redis", f"{REDIS}?prefix=bench:{uuid.uuid4().hex[:8]}:"),
    ):
        console_port = free_port()
        orchestrator = start_orchestrator(store, [plugin.address], MCP_CONSOLE_LISTEN=f"127.0.0.1:{console_port}")
        url = f"http://127.0.0.1:{console_port}"
        try:
            async with Client(orchestrator.address, timeout=120) as client:
                await client.create_workflow(chain("one", 1))
                await client.create_workflow(chain("other", 1))
                started = time.perf_counter()
                await fill(client, "one", count - 100)
                await fill(client, "other", 100)
                filled = time.perf_counter() - started
                await client.create_workflow(chain("ticker", 20, "sleep", "{'ms': 50}"))
                ticker = await client.submit("ticker")
                async with aiohttp.ClientSession() as session:
                    delays = await sse_delays(session, f"{url}/tasks/{ticker.task_id}/events")
            async with aiohttp.ClientSession() as session:
                first = await session.get(f"{url}/tasks")
                next_token = re.search(r'id="next-page" href="\?[^"]*page=([^"&]+)', await first.text())
                rows: list[tuple[str, Stat | float | str, str]] = []
                runs = 3
                for name, path in (
                    ("first page, no filter", "/tasks"),
                    ("first page, status=completed", "/tasks?status=completed"),
                    ("first page, workflow=other (100 of them)", "/tasks?workflow=other"),
                    ("second page", f"/tasks?page={next_token.group(1) if next_token else ''}"),
                ):
                    p50, p95 = Stat(), Stat()
                    for _ in range(runs):
                        samples = await page_times(session, url + path, 20 if quick else 50)
                        p50.runs.append(percentile(samples, 0.5))
                        p95.runs.append(percentile(samples, 0.95))
                    rows.append(
                        (
                            f"{name}: p50 ms",
                            p50,
                            f"{p50.median / TARGET_LIST_MS:.2f}x of the {TARGET_LIST_MS:.0f} ms target",
                        )
                    )
                    rows.append((f"{name}: p95 ms", p95, ""))
                task_page = await page_times(session, f"{url}/tasks/{ticker.task_id}", 20)
                rows.append(("a task page (20 steps): p50 ms", Stat([percentile(task_page, 0.5)]), ""))
                live = delays[1:]  # the first ones may be replayed, not live
                rows.append(
                    (
                        "step event -> console SSE: p50 ms",
                        Stat([percentile(live, 0.5)]),
                        f"{percentile(live, 0.5) / TARGET_EVENT_MS:.2f}x"
                        f" of the {TARGET_EVENT_MS:.0f} ms target (server side)",
                    )
                )
                rows.append(("step event -> console SSE: max ms", Stat([max(live)]), ""))
            table(
                f"Console ({store_name} store, {count:,} tasks, filled in {filled:.0f} s): HTTP GET as a browser would",
                rows,
            )
        finally:
            orchestrator.stop()
