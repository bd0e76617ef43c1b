"""Bulk actions with real orchestrator processes: a rerun action whose replicas are all killed
with kill -9 halfway goes on in a fresh one and reruns every task exactly once (both stores), and
the CLI starts, waits for and lists an action."""

from __future__ import annotations

import asyncio
import collections
import json
import signal
import uuid

import pytest

from mcp_sdk.proto import bulk_pb2, task_pb2
from tests.conftest import client_for_address
from tests.e2e.test_server_process import free_port, mcp
from tests.helpers import bulk_action_ended, failed_tasks
from tests.support.processes import replica_set, start_orchestrator

pytestmark = pytest.mark.asyncio
TASKS = 120
THROTTLE = {"MCP_LIMIT_SUBMISSIONS_PER_SECOND": "40", "MCP_LEASE_SECONDS": "1.5"}


async def reruns_of(client, action_id: str) -> collections.Counter[str]:
    reply = await client.tasks.ListTasks(
        task_pb2.ListTasksRequest(labels={"mcp/bulk-action": action_id}, page_size=1000)
    )
    return collections.Counter(task.rerun_of for task in reply.tasks)


async def start_rerun(client, workflow_id: str) -> bulk_pb2.BulkAction:
    selection = bulk_pb2.TaskSelection(workflow_id=workflow_id, statuses=[task_pb2.TASK_STATUS_FAILED])
    request = bulk_pb2.StartBulkActionRequest(kind=bulk_pb2.BULK_ACTION_KIND_RERUN, selection=selection)
    return await client.bulk_actions.StartBulkAction(request)


async def test_every_replica_killed_halfway_and_a_fresh_one_reruns_each_task_once_on_redis(plugins, redis_url):
    workflow_id = f"fails-{uuid.uuid4().hex[:6]}"
    testkit = [plugins["testkit"].address]
    async with replica_set(2, redis_url, testkit, "bulk", **THROTTLE) as (replicas, clients):
        failed = await failed_tasks(clients[0], workflow_id, TASKS)
        action = await start_rerun(clients[1], workflow_id)
        async with asyncio.timeout(30):
            while sum((await reruns_of(clients[0], action.action_id)).values()) < TASKS // 3:
                await asyncio.sleep(0.05)
        for process in replicas:
            process.send_signal(signal.SIGKILL)
            process.wait()
    async with replica_set(1, redis_url, testkit, "fresh", **THROTTLE) as (_, (client,)):
        done = await bulk_action_ended(client, action.action_id)
        counted = await reruns_of(client, action.action_id)
    assert done.state == bulk_pb2.BULK_ACTION_STATE_DONE
    assert sorted(counted) == sorted(failed) and set(counted.values()) == {1}


async def test_a_killed_server_on_sqlite_reruns_each_task_once_after_its_restart(plugins, tmp_path):
    store = f"sqlite:///{tmp_path}/bulk.db"
    address = f"127.0.0.1:{free_port()}"
    testkit = [plugins["testkit"].address]
    process = start_orchestrator(address, store, testkit, "solo", **THROTTLE)
    client = client_for_address(address)
    try:
        failed = await failed_tasks(client, "fails", TASKS)
        action = await start_rerun(client, "fails")
        async with asyncio.timeout(30):
            while sum((await reruns_of(client, action.action_id)).values()) < TASKS // 3:
                await asyncio.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait()
        await client.channel.close()
        process = start_orchestrator(address, store, testkit, "again", **THROTTLE)
        client = client_for_address(address)
        done = await bulk_action_ended(client, action.action_id)
        counted = await reruns_of(client, action.action_id)
        assert done.state == bulk_pb2.BULK_ACTION_STATE_DONE
        assert sorted(counted) == sorted(failed) and set(counted.values()) == {1}
        # the CLI: by id, waiting for the end, then the list
        cancelled = mcp(address, "--json", "bulk", "cancel", failed[0], "no-such-task", "--wait")
        assert cancelled.returncode == 0, cancelled.stderr
        shown = json.loads(cancelled.stdout)
        assert shown["state"] == "BULK_ACTION_STATE_DONE" and int(shown["skipped"]) == 2  # finished, and gone
        deleted = json.loads(mcp(address, "--json", "bulk", "delete", failed[1], "--wait").stdout)
        assert deleted["kind"] == "BULK_ACTION_KIND_DELETE" and int(deleted["succeeded"]) == 1
        listed = mcp(address, "bulk", "list")
        assert listed.returncode == 0 and action.action_id in listed.stdout and shown["action_id"] in listed.stdout
        recent = json.loads(mcp(address, "--json", "task", "list", "--workflow", "fails", "--since", "1h").stdout)
        older = json.loads(mcp(address, "--json", "task", "list", "--workflow", "fails", "--until", "1h").stdout)
        assert len(recent["tasks"]) == 50 and "tasks" not in older  # every one made within the hour
        refused = mcp(address, "bulk", "rerun", "--since", "yesterday-ish")
        assert refused.returncode != 0 and "RFC 3339" in refused.stderr
    finally:
        await client.channel.close()
        process.terminate()
        process.wait(timeout=15)
