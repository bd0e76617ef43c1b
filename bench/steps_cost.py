"""`python -m bench --only cache`: what a step cache hit and usage accounting cost.

1. A cache hit against a call: chains of 1 and 10 steps, each step calling the echo plugin or
   hitting the step cache (the same input every time, so every step after the warm-up is a hit).
   The cost of one step is (10-step chain - 1-step chain) / 9, in ms per task from the throughput
   at 32 tasks in flight. Target: a hit under 0.5x a call.
2. Usage accounting: a 3-step chain whose plugin reports usage on every call against the same
   chain reporting none; the server's CPU per task (same run, interleaved). Target: under 2%.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from bench.harness import CpuMeter, Orchestrated, Proc, Stat, start_orchestrator, throughput
from bench.report import REDIS, table

IN_FLIGHT = 32


def chain_of(workflow_id: str, steps: int, body: dict[str, Any]) -> dict[str, Any]:
    children = [{"id": f"s{i}", "step": dict(body)} for i in range(steps)]
    return {"workflow_id": workflow_id, "root": {"id": "root", "sequence": {"children": children}}}


async def bench_cache(plugin: Proc, quick: bool) -> None:
    rounds, tasks = (2, 200) if quick else (3, 600)
    store = f"{REDIS}?prefix=bench:{uuid.uuid4().hex[:8]}:"
    orchestrator = start_orchestrator(store, [plugin.address])
    client = Orchestrated(orchestrator.address)
    echo = {"protocol": "echo", "input": "{'n': 1}"}
    cached = {**echo, "cache": {"ttl": "3600s"}}
    # the same input both ways: the plugin reports usage only when `report` is true
    usage = "'usage': {'prompt_tokens': 120, 'completion_tokens': 40}"
    metered_body = {"protocol": "metered", "input": f"{{'n': 1, 'report': false, {usage}}}"}
    used = {"protocol": "metered", "input": f"{{'n': 1, 'report': true, {usage}}}"}
    definitions = {
        "echo-1": chain_of("echo-1", 1, echo),
        "echo-10": chain_of("echo-10", 10, echo),
        "cached-1": chain_of("cached-1", 1, cached),
        "cached-10": chain_of("cached-10", 10, cached),
        "plain-3": chain_of("plain-3", 3, metered_body),
        "used-3": chain_of("used-3", 3, used),
    }
    try:
        for definition in definitions.values():
            await client.create(definition)
        per_task = {name: Stat() for name in ("echo-1", "echo-10", "cached-1", "cached-10")}
        cpu = {name: Stat() for name in ("plain-3", "used-3")}
        meter = CpuMeter([orchestrator.process.pid])

        def runner(workflow_id: str) -> Callable[[], Awaitable[float]]:
            return lambda: client.run(workflow_id, read="submit-watch")

        for name in definitions:  # warm up (and fill the cache)
            await throughput(runner(name), IN_FLIGHT, IN_FLIGHT * 2)
        for _ in range(rounds):
            for name, stat in per_task.items():
                stat.runs.append(1000 / await throughput(runner(name), IN_FLIGHT, tasks))
            for name, stat in cpu.items():
                meter.start()
                await throughput(runner(name), IN_FLIGHT, tasks)
                stat.runs.append(meter.stop()[0] * 1000 / tasks)
    finally:
        await client.close()
        orchestrator.stop()
    call = (per_task["echo-10"].median - per_task["echo-1"].median) / 9
    hit = (per_task["cached-10"].median - per_task["cached-1"].median) / 9
    extra = cpu["used-3"].median / cpu["plain-3"].median - 1
    table(
        "Step cache and usage (redis store)",
        [
            ("a step calling echo: ms per step", float(round(call, 4)), "(10-step - 1-step chain) / 9"),
            ("a step cache hit: ms per step", float(round(hit, 4)), f"{hit / call:.2f}x a call (target < 0.5x)"),
            ("3 steps, no usage reported: server CPU ms per task", cpu["plain-3"], ""),
            ("3 steps, usage on every call: server CPU ms per task", cpu["used-3"], f"{extra:+.1%} (target < 2%)"),
        ],
    )
