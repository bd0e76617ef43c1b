"""`python -m bench --only waits`: what waiting costs.

- Memory: the orchestrator's resident memory per waiting task: how much it grows from N tasks
  waiting to 2N (a parked task holds nothing of its own: what grows is what is kept per task;
  the first N pay for the pools and caches every burst of work grows once).
- Resume: from SignalTask to the task's end (it resumes, its wait takes the signal, one echo step
  runs), against a one-echo-step task from SubmitAndWatchTask to its end, in the same run.
- Timers: N tasks sleeping until the same second; how long after it they have all ended, and
  the lateness of each (its end against its deadline).
- Racing signals (Redis, two replicas): tasks that wait three times (once, then twice in
  parallel), each sent its three signals through either replica at random moments, many around
  the moment the run parks: every task must end with each signal at one wait, in order; how
  long SignalTask takes to answer, and a task from submit to its end.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

from google.protobuf import json_format, struct_pb2

from bench.harness import CpuMeter, Orchestrated, Proc, Stat, chain, fresh_store, percentile, start_orchestrator
from bench.report import REDIS, table
from mcp_sdk.proto import task_pb2

WAIT = {
    "workflow_id": "approve",
    "root": {
        "id": "root",
        "sequence": {
            "children": [
                {"id": "ask", "wait": {"signal": "go"}},
                {"id": "after", "step": {"protocol": "echo"}},
            ]
        },
    },
}
THREE_WAITS = {
    "workflow_id": "three-waits",
    "root": {
        "id": "root",
        "sequence": {
            "children": [
                {"id": "a", "wait": {"signal": "go"}},
                {"id": "p", "parallel": {"children": [{"id": f, "wait": {"signal": "go"}} for f in ("b", "c")]}},
            ]
        },
    },
}
HELD_WAIT = {
    "workflow_id": "held-wait",
    "root": {"id": "root", "sequence": {"children": [{"id": "w", "wait": {"signal": "go", "timeout": "60s"}}]}},
}
TIMER = {
    "workflow_id": "alarm",
    "root": {"id": "root", "sequence": {"children": [{"id": "nap", "sleep": {"until": "timestamp(input.at)"}}]}},
}


async def bench_waits(plugin: Proc, quick: bool) -> None:
    for backend in ("redis", "sqlite"):
        store = fresh_store(backend, REDIS)
        orchestrator = start_orchestrator(store, [plugin.address])
        client = Orchestrated(orchestrator.address)
        try:
            rows = await _memory_and_resume(
                orchestrator, client, backend, 2_000 if quick else 10_000, 30 if quick else 100
            )
            rows += await _timers(orchestrator, client, backend, 2_000 if quick else 10_000)
        finally:
            await client.close()
            orchestrator.stop()
        table(f"Waits ({backend} store)", rows)
    table("Signals racing the park, two replicas on one Redis", await _racing_signals(plugin, 200 if quick else 1_000))
    table(
        "A signal through the replica that does not run the task, two replicas on one Redis",
        await _signal_to_held(plugin, 50 if quick else 200),
    )


async def _submit_all(client: Orchestrated, workflow_id: str, inputs: list[dict[str, Any]]) -> list[str]:
    """Submit a task per input, 100 at a time; their ids, in order."""
    ids: list[str] = []
    for start in range(0, len(inputs), 100):
        requests = []
        for data in inputs[start : start + 100]:
            request = task_pb2.SubmitTaskRequest(workflow_id=workflow_id)
            request.input_data.update(data)
            requests.append(client.tasks.SubmitTask(request))
        ids += [reply.task.task_id for reply in await asyncio.gather(*requests)]
    return ids


async def _count(client: Orchestrated, status: Any, workflow_id: str) -> int:
    listed = await client.tasks.ListTasks(
        task_pb2.ListTasksRequest(statuses=[status], workflow_id=workflow_id, page_size=1)
    )
    return int(listed.total_size)


async def _until_count(client: Orchestrated, status: Any, workflow_id: str, count: int, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while await _count(client, status, workflow_id) < count:
            await asyncio.sleep(0.2)


async def _memory_and_resume(
    orchestrator: Proc, client: Orchestrated, backend: str, waiting: int, samples: int
) -> list[tuple[str, Stat | float | str, str]]:
    await client.create(WAIT)
    await client.create(chain("one-echo", 1))
    for _ in range(20):  # warm up both paths
        await client.run("one-echo", read="submit-watch")
    start = orchestrator.rss_kb()
    ids = await _submit_all(client, "approve", [{"n": i} for i in range(waiting)])
    await _until_count(client, task_pb2.TASK_STATUS_WAITING, "approve", waiting, 600)
    await asyncio.sleep(1.0)
    before = orchestrator.rss_kb()
    ids += await _submit_all(client, "approve", [{"n": i} for i in range(waiting)])
    await _until_count(client, task_pb2.TASK_STATUS_WAITING, "approve", 2 * waiting, 600)
    await asyncio.sleep(1.0)
    after = orchestrator.rss_kb()
    per_task = (after - before) * 1024 / waiting
    first = (before - start) * 1024 / waiting
    one_step, resumed = Stat(), Stat()
    payload = json_format.ParseDict({"ok": True}, struct_pb2.Value())
    for index in range(samples):  # interleaved, so the drift of the machine falls on both alike
        one_step.runs.append(await client.run("one-echo", read="submit-watch") * 1000)
        resumed.runs.append(await _signal_to_end(client, ids[index], payload) * 1000)
    ratio = resumed.median / one_step.median
    return [
        (
            f"{waiting:,} -> {2 * waiting:,} tasks waiting: orchestrator memory per task, bytes",
            f"{per_task:.0f}",
            f"resident growth (the first {waiting:,}: {first:.0f} per task, pools and caches included)",
        ),
        ("one echo step: SubmitAndWatchTask to its end, ms", one_step, ""),
        ("a waiting task: SignalTask to its end (resume + one echo step), ms", resumed, f"{ratio:.2f}x one echo step"),
    ]


async def _signal_to_end(client: Orchestrated, task_id: str, payload: struct_pb2.Value) -> float:
    """Seconds from SignalTask to the task's COMPLETED event (the watch is open before)."""
    header = (await client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=task_id, view=task_pb2.TASK_VIEW_BASIC))).task
    watch = client.tasks.WatchTaskEvents(
        task_pb2.WatchTaskRequest(task_id=task_id, after_sequence=header.last_sequence)
    )
    events = watch.__aiter__()
    await asyncio.sleep(0.01)  # the watch is set up on the server
    started = time.perf_counter()
    await client.tasks.SignalTask(task_pb2.SignalTaskRequest(task_id=task_id, signal="go", payload=payload))
    async for message in events:
        if message.events[-1].type == task_pb2.TASK_EVENT_TYPE_COMPLETED:
            break
    return time.perf_counter() - started


async def _timers(
    orchestrator: Proc, client: Orchestrated, backend: str, count: int
) -> list[tuple[str, Stat | float | str, str]]:
    await client.create(TIMER)
    lead = 20 + count / 250  # time to submit them all and see them parked
    at = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=lead)
    due = at.timestamp()
    await _submit_all(client, "alarm", [{"at": at.isoformat().replace("+00:00", "Z"), "i": i} for i in range(count)])
    await _until_count(client, task_pb2.TASK_STATUS_WAITING, "alarm", count, lead)
    await asyncio.sleep(max(0.0, due - time.time() - 1))
    meter = CpuMeter([orchestrator.process.pid])
    meter.start()
    await _until_count(client, task_pb2.TASK_STATUS_COMPLETED, "alarm", count, 120)
    all_done = time.time() - due
    cpu = meter.stop()[0]
    lateness = []
    token = ""
    while True:
        page = await client.tasks.ListTasks(
            task_pb2.ListTasksRequest(workflow_id="alarm", page_size=1000, page_token=token)
        )
        lateness += [t.end_time.ToNanoseconds() / 1e9 - due for t in page.tasks]
        token = page.next_page_token
        if not token:
            break
    return [
        (f"{count:,} timers due in the same second: all ended after, s", f"{all_done:.2f}", "from their due time"),
        (
            "  lateness p50 / p99, s",
            f"{statistics.median(lateness):.2f} / {percentile(lateness, 0.99):.2f}",
            "end - due",
        ),
        ("  orchestrator CPU per fired timer, ms", f"{cpu * 1000 / count:.2f}", "resume, write, end"),
    ]


async def _close(clients: list[Orchestrated], replicas: list[Proc]) -> None:
    for client in clients:
        await client.close()
    for replica in replicas:
        replica.stop()


def _p50_p99_max(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} / {percentile(values, 0.99):.1f} / {max(values):.1f}"


async def _signal_to_held(
    plugin: Proc, tasks: int, code: Path | None = None
) -> list[tuple[str, Stat | float | str, str]]:
    """Tasks whose one wait waits in memory on the replica that runs them (due within
    MCP_WAIT_IN_MEMORY_SECONDS, so not parked); each signal goes through the other replica, and
    SignalTask answers once the run has taken it in. `code`: run that checkout's server."""
    store = f"{REDIS}?prefix=bench:{uuid.uuid4().hex[:8]}:"
    replicas = [
        start_orchestrator(store, [plugin.address], f"held-{i}", code, MCP_WAIT_IN_MEMORY_SECONDS="120")
        for i in range(2)
    ]
    clients = [Orchestrated(r.address) for r in replicas]
    answers: list[float] = []
    untaken = 0
    try:
        await clients[0].create(HELD_WAIT)
        for _ in range(tasks):
            task = (await clients[0].tasks.SubmitTask(task_pb2.SubmitTaskRequest(workflow_id="held-wait"))).task
            holder = 0
            async for event in clients[0].tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=task.task_id)):
                if event.type == task_pb2.TASK_EVENT_TYPE_STARTED:
                    holder = 1 if "held-1" in event.message else 0
                if event.type == task_pb2.TASK_EVENT_TYPE_STEP_SUSPENDED:
                    break
            other = clients[1 - holder]
            sent = time.perf_counter()
            answer = await other.tasks.SignalTask(task_pb2.SignalTaskRequest(task_id=task.task_id, signal="go"))
            answers.append((time.perf_counter() - sent) * 1000)
            untaken += not answer.step_path
    finally:
        await _close(clients, replicas)
    return [
        (
            f"{tasks} signals: SignalTask p50 / p99 / max, ms",
            _p50_p99_max(answers),
            "the run on the other replica is told by a pub/sub nudge (before: its 200 ms poll)",
        ),
        ("  answered before the run took the signal in (after 5 s)", f"{untaken}", f"of {tasks}"),
    ]


async def _racing_signals(
    plugin: Proc, tasks: int, code: Path | None = None
) -> list[tuple[str, Stat | float | str, str]]:
    """`code`: run that checkout's server (a baseline) instead of this one."""
    store = f"{REDIS}?prefix=bench:{uuid.uuid4().hex[:8]}:"
    replicas = [start_orchestrator(store, [plugin.address], f"race-{i}", code) for i in range(2)]
    clients = [Orchestrated(r.address) for r in replicas]
    answers: list[float] = []
    ends: list[float] = []
    late = stuck = wrong = 0
    rng = random.Random(7)

    async def one() -> None:
        nonlocal late, stuck, wrong
        started = time.perf_counter()
        task = (await clients[0].tasks.SubmitTask(task_pb2.SubmitTaskRequest(workflow_id="three-waits"))).task
        await asyncio.sleep(rng.random() * 0.03)
        for n in range(3):
            sent = time.perf_counter()
            request = task_pb2.SignalTaskRequest(task_id=task.task_id, signal="go")
            request.payload.number_value = n
            answer = await rng.choice(clients).tasks.SignalTask(request)
            answers.append((time.perf_counter() - sent) * 1000)
            late += not answer.sequence  # not taken in within SignalTask's 5 s
            await asyncio.sleep(rng.random() * 0.02)
        try:
            async with asyncio.timeout(30):
                async for _ in clients[1].tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=task.task_id)):
                    pass
        except TimeoutError:
            stuck += 1
            return
        ends.append((time.perf_counter() - started) * 1000)
        got = (await clients[1].tasks.GetTask(task_pb2.GetTaskRequest(task_id=task.task_id))).task
        outputs = {s.path: s.output.number_value for s in got.steps if s.output.HasField("number_value")}
        a, b, c = (outputs.get(f"root/{path}", -1.0) for path in ("a", "p/b", "p/c"))
        wrong += a != 0 or sorted([b, c]) != [1, 2]

    try:
        await clients[0].create(THREE_WAITS)
        for start in range(0, tasks, 50):
            await asyncio.gather(*(one() for _ in range(min(50, tasks - start))))
    finally:
        await _close(clients, replicas)
    return [
        (
            f"{tasks:,} tasks, 3 signals each through either replica: stuck / wrong",
            f"{stuck} / {wrong}",
            "must be 0 / 0",
        ),
        ("  SignalTask answered before the task took it in (after 5 s)", f"{late}", f"of {3 * tasks:,}"),
        (
            "  SignalTask p50 / p99 / max, ms",
            _p50_p99_max(answers),
            "a signal to a task another replica holds reaches it by a pub/sub nudge (before: its 200 ms poll)",
        ),
        (
            "  a task, submit to end, p50 / p99, ms",
            f"{statistics.median(ends):.0f} / {percentile(ends, 0.99):.0f}" if ends else "-",
            "includes the client's pauses (up to 90 ms)",
        ),
    ]
