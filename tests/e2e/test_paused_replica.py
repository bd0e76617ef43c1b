"""A replica paused past its leases (SIGSTOP: a frozen VM, a process swapped out, a laptop lid
closed) wakes to runs that another replica has taken over meanwhile."""

from __future__ import annotations

import asyncio
import signal
import uuid

import pytest

from mcp_sdk.proto import task_pb2
from tests.helpers import create, plugin_stats, step, submit, wait_done, workflow
from tests.support.processes import replica_set

pytestmark = pytest.mark.asyncio
S = task_pb2.TaskStatus


async def test_a_replica_paused_past_its_leases_starts_no_step_when_it_wakes(plugins, testkit, redis_url):
    """Its leases ran out while it was paused, and the other replica took its task over. On
    waking it must not start another step of that run (the other replica calls it too, and a
    concurrency key's cap counts at the plugin): only the step in flight when it was paused may
    be called twice (and the one before it, if the pause caught its completion on the way out)."""
    async with replica_set(2, redis_url, [plugins["testkit"].address], "paused", MCP_LEASE_SECONDS="1.5") as (
        processes,
        clients,
    ):
        name = f"steady-{uuid.uuid4().hex[:8]}"
        steps = [step(f"s{i}", "sleep", "{'ms': 40}") for i in range(80)]
        await create(clients[0], workflow(name, {"id": "seq", "sequence": {"children": steps}}))
        task = await submit(clients[0], name)  # it starts on the replica it was submitted to
        async with asyncio.timeout(20):
            while len((await clients[1].tasks.GetTask(task_pb2.GetTaskRequest(task_id=task.task_id))).task.steps) < 5:
                await asyncio.sleep(0.02)
        processes[0].send_signal(signal.SIGSTOP)
        await asyncio.sleep(4)  # past its leases (1.5 s): the other replica takes the task over
        processes[0].send_signal(signal.SIGCONT)
        done = await wait_done(clients[1], task.task_id, timeout=60)
        assert done.status == S.TASK_STATUS_COMPLETED
        calls = {k: n for k, n in (await plugin_stats(testkit))["calls"].items() if k.startswith(task.task_id)}
        assert len(calls) == 80
        twice = sorted(k for k, n in calls.items() if n > 1)
        assert len(twice) <= 2, twice
