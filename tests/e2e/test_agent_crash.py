"""An agent survives kill -9 of its replica, on both stores: real orchestrator processes; the
replica is killed while a tool call runs, and a fresh one on the same store resumes the agent from
its last write: the model's first round is not asked again (the conversation is rebuilt from the
recorded steps, a large answer among them read back from its chunks), the call in flight is made
again, and the next round sees its answer."""

from __future__ import annotations

import asyncio
import json
import signal

import pytest

from mcp_sdk.proto import task_pb2
from tests.conftest import client_for_address
from tests.e2e.test_cancel_cleanup_crash import until_started
from tests.e2e.test_server_process import free_port
from tests.helpers import create, plugin_stats, step, step_states, submit, wait_done, workflow
from tests.integration.test_agents import read_value
from tests.support.processes import start_orchestrator

pytestmark = pytest.mark.asyncio
LEASE = {"MCP_LEASE_SECONDS": "1.5"}


def helper() -> task_pb2.Task:
    script = [[{"id": "c1", "name": "quick"}, {"id": "c2", "name": "slow"}]]
    messages = "[{'role': 'user', 'content': 'go', 'script': " + json.dumps(script) + "}]"
    tools = [
        {"name": "quick", "node": step("quick", "sized", "{'bytes': 200000, 'tag': 'quick'}")},  # stored in chunks
        {"name": "slow", "node": step("slow", "sleep", "{'ms': 4000}")},
    ]
    agent = {"model": step("think", "scripted_model"), "messages": messages, "tools": tools}
    return workflow("agent-crash", {"id": "helper", "agent": agent})


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_an_agent_resumes_after_kill_9_without_asking_its_model_again(
    plugins, testkit, tmp_path, request, backend
):
    store = f"sqlite:///{tmp_path}/mcp.db" if backend == "sqlite" else request.getfixturevalue("redis_url")
    plugin = plugins["testkit"].address
    address = f"127.0.0.1:{free_port()}"
    doomed = start_orchestrator(address, store, [plugin], f"doomed-agent-{backend}", **LEASE)
    client = client_for_address(address)
    try:
        await create(client, helper())
        task_id = (await submit(client, "agent-crash")).task_id
        await until_started(client, task_id, "helper/slow")
        await asyncio.sleep(0.5)  # the quick call's end and the slow call's start are written
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(timeout=10)
    finally:
        await client.channel.close()

    address = f"127.0.0.1:{free_port()}"
    fresh = start_orchestrator(address, store, [plugin], f"fresh-agent-{backend}", **LEASE)
    client = client_for_address(address)
    try:
        done = await wait_done(client, task_id, timeout=40)
        assert done.status == task_pb2.TASK_STATUS_COMPLETED, done.error
        result = await read_value(client, task_id, "", task_pb2.VALUE_FIELD_OUTPUT)  # 200 KB: by reference
        quick, slow = (json.loads(a) for a in result["answers"])
        assert result["rounds"] == 2 and slow == {"ms": 4000, "slept_ms": 4000}
        assert quick["tag"] == "quick" and len(quick["data"]) > 199_000  # read back whole from its chunks
        calls = (await plugin_stats(testkit))["calls"]
        assert calls[f"{task_id}/helper/think/scripted_model"] == 1  # not asked again
        assert calls[f"{task_id}/helper/quick/sized"] == 1
        assert calls[f"{task_id}/helper/slow/sleep"] == 2  # in flight at the kill
        assert calls[f"{task_id}/helper/think#2/scripted_model"] == 1
        assert step_states(done)["helper/think#2"].status == task_pb2.STEP_STATUS_COMPLETED
    finally:
        await client.channel.close()
        fresh.terminate()
        fresh.wait(timeout=15)
