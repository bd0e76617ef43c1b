"""`python -m bench --only schedules`: 10,000 schedules firing every minute on one replica.

Schedule i fires at second i % 60 of every minute (about 167 fire times each second). The
replica runs no tasks (MCP_LIMIT_MAX_TASKS_IN_FLIGHT=0), so what is measured is the firing:
claiming due schedules, starting each fire time's task (stored and queued), recording it. Over
one minute of firing: how late each task was stored after its fire time (p50, p99, max; target:
within 1 s), and the server's CPU per fire (target: under 1 ms).
"""

from __future__ import annotations

import asyncio
import time
import uuid

from bench.harness import CpuMeter, Orchestrated, Proc, Stat, percentile, start_orchestrator
from bench.report import REDIS, table
from mcp_sdk.proto import schedule_pb2, schedule_pb2_grpc, task_pb2

SCHEDULES = 10_000


async def bench_schedules(plugin: Proc, quick: bool) -> None:
    count = 1_000 if quick else SCHEDULES
    store = f"{REDIS}?prefix=bench:{uuid.uuid4().hex[:8]}:"
    orchestrator = start_orchestrator(store, [plugin.address], MCP_LIMIT_MAX_TASKS_IN_FLIGHT="0")
    client = Orchestrated(orchestrator.address)
    try:
        await client.create({"workflow_id": "tick", "root": {"id": "e", "step": {"protocol": "echo"}}})
        stub = schedule_pb2_grpc.ScheduleServiceStub(client.channel)

        async def make(i: int) -> None:
            schedule = schedule_pb2.Schedule(
                schedule_id=f"s{i:05d}",
                spec=schedule_pb2.ScheduleSpec(cron=[f"{i % 60} * * * * *"]),
                action=task_pb2.SubmitTaskRequest(workflow_id="tick"),
                overlap=schedule_pb2.OVERLAP_POLICY_ALLOW_ALL,
            )
            await stub.CreateSchedule(schedule_pb2.CreateScheduleRequest(schedule=schedule))

        for start in range(0, count, 200):
            await asyncio.gather(*(make(i) for i in range(start, min(count, start + 200))))
        # start measuring at a minute's turn, for one whole minute
        await asyncio.sleep(60 - time.time() % 60 + 0.5)
        begun = time.time()
        meter = CpuMeter([orchestrator.process.pid])
        meter.start()
        await asyncio.sleep(60)
        cpu = meter.stop()[0]
        lateness = await _lateness(client, begun, begun + 60)
    finally:
        await client.close()
        orchestrator.stop()
    fires = len(lateness)
    table(
        f"Schedules: {count:,} schedules, each firing once a minute (redis store, one replica, tasks not run)",
        [
            ("fires in the minute", float(fires), f"expected {count:,}"),
            ("lateness p50, ms", Stat([percentile(lateness, 0.5)]), "fire time -> its task stored"),
            ("lateness p99, ms", Stat([percentile(lateness, 0.99)]), "target: every fire within 1,000 ms"),
            ("lateness max, ms", Stat([max(lateness)]), ""),
            ("server CPU per fire, ms", Stat([cpu * 1000 / max(1, fires)]), "target < 1 ms"),
        ],
    )


async def _lateness(client: Orchestrated, start: float, end: float) -> list[float]:
    """Milliseconds from each fire time in [start, end) to its task's creation."""
    late = []
    token = ""
    while True:
        reply = await client.tasks.ListTasks(
            task_pb2.ListTasksRequest(workflow_id="tick", page_size=5000, page_token=token)
        )
        for task in reply.tasks:
            fired = time.mktime(time.strptime(task.labels["mcp/fire-time"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
            if start <= fired < end:
                late.append((task.create_time.ToNanoseconds() / 1e9 - fired) * 1000)
        token = reply.next_page_token
        if not token:
            return late
