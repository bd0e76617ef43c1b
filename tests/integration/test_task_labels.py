"""ListTasks by label through the public API, on both stores: each principal finds only its own
tasks by a label, a rerun carries its source's labels, and a bad filter is refused naming the field."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from mcp_sdk.proto import task_pb2, task_pb2_grpc, workflow_pb2, workflow_pb2_grpc
from tests.helpers import bearer, principals_file, step, violations, workflow

pytestmark = pytest.mark.asyncio
ROLES = {"alice": ["author"], "bob": [], "root": ["admin"]}


async def listed(tasks: Any, who: str, labels: dict[str, str], **rest: Any) -> list[str]:
    request = task_pb2.ListTasksRequest(labels=labels, **rest)
    return [t.task_id for t in (await tasks.ListTasks(request, metadata=bearer(who))).tasks]


async def test_each_principal_finds_its_own_tasks_by_label_and_a_rerun_carries_them(
    server_factory, store_url, tmp_path
):
    running = await server_factory(store=store_url, auth_file=principals_file(tmp_path, ROLES))
    async with grpc.aio.insecure_channel(running.address) as channel:
        tasks = task_pb2_grpc.TaskServiceStub(channel)
        request = workflow_pb2.CreateWorkflowRequest(workflow=workflow("labelled", step("s", "echo")))
        await workflow_pb2_grpc.WorkflowServiceStub(channel).CreateWorkflow(request, metadata=bearer("alice"))

        async def submit(who: str, labels: dict[str, str]) -> task_pb2.Task:
            request = task_pb2.SubmitTaskRequest(workflow_id="labelled", labels=labels)
            return (await tasks.SubmitTask(request, metadata=bearer(who))).task

        alices = await submit("alice", {"order": "A-1", "customer": "acme"})
        await submit("alice", {"order": "A-2", "customer": "acme"})
        bobs = await submit("bob", {"order": "A-1"})
        assert await listed(tasks, "alice", {"order": "A-1"}) == [alices.task_id]
        assert await listed(tasks, "bob", {"order": "A-1"}) == [bobs.task_id]
        assert await listed(tasks, "root", {"order": "A-1"}) == [bobs.task_id, alices.task_id]
        assert await listed(tasks, "root", {"order": "A-1"}, owner="alice") == [alices.task_id]
        assert len(await listed(tasks, "alice", {"customer": "acme"})) == 2
        one = await tasks.ListTasks(task_pb2.ListTasksRequest(labels={"order": "A-1"}), metadata=bearer("root"))
        assert one.total_size == 2

        read = task_pb2.GetTaskRequest(task_id=alices.task_id)
        async with asyncio.timeout(30):  # only a finished task is rerun
            while (await tasks.GetTask(read, metadata=bearer("alice"))).task.status != task_pb2.TASK_STATUS_COMPLETED:
                await asyncio.sleep(0.02)
        rerun = await tasks.RerunTask(task_pb2.RerunTaskRequest(task_id=alices.task_id), metadata=bearer("alice"))
        assert dict(rerun.task.labels) == {"order": "A-1", "customer": "acme"}
        assert await listed(tasks, "alice", {"order": "A-1"}) == [rerun.task.task_id, alices.task_id]
        done = (task_pb2.TASK_STATUS_COMPLETED,)
        assert alices.task_id in await listed(tasks, "alice", {"order": "A-1"}, statuses=done)

        for bad in ({f"k{i}": "v" for i in range(9)}, {"a key": "v"}, {"k": "v" * 257}):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await listed(tasks, "alice", bad)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert any(v.startswith("labels") for v in violations(err.value)), violations(err.value)
