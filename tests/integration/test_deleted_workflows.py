"""A workflow deleted while tasks of it are unfinished: those tasks run to their end on any replica,
after any restart, and read back whole (the server accepted them); nothing new starts from it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest

from mcp_sdk.proto import task_pb2, workflow_pb2
from mcp_server.settings import Limits
from tests.conftest import client_for
from tests.helpers import create, error_reason, refused, step, submit, wait_done, workflow

pytestmark = pytest.mark.asyncio
S = task_pb2
WAITS = {"id": "root", "sequence": {"children": [{"id": "w", "wait": {"signal": "go"}}, step("say", "echo")]}}


@pytest.fixture(params=["sqlite", "redis"])
def shared_store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store that outlives a server: a file, or the test's Redis prefix."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return str(request.getfixturevalue("redis_url"))


async def until_status(client: Any, task_id: str, status: int) -> None:
    async with asyncio.timeout(10):
        while (await client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=task_id))).task.status != status:
            await asyncio.sleep(0.02)


async def delete(client: Any, workflow_id: str) -> int:
    request = workflow_pb2.DeleteWorkflowRequest(workflow_id=workflow_id)
    return (await client.workflows.DeleteWorkflow(request)).versions_deleted


async def test_unfinished_tasks_of_a_deleted_workflow_finish_on_a_fresh_replica(server_factory, shared_store):
    first = await server_factory(store=shared_store)
    client = client_for(first)
    await create(client, workflow("retiring", WAITS))
    waiting = await submit(client, "retiring", {"who": "ada"})
    await until_status(client, waiting.task_id, S.TASK_STATUS_WAITING)
    await delete(client, "retiring")
    await first.stop(0.5)
    await client.channel.close()

    second = await server_factory(store=shared_store)  # compiles its plans afresh
    client = client_for(second)
    await client.tasks.SignalTask(task_pb2.SignalTaskRequest(task_id=waiting.task_id, signal="go"))
    done = await wait_done(client, waiting.task_id, timeout=15)
    assert done.status == S.TASK_STATUS_COMPLETED, done.error
    steps = await client.tasks.ListTaskSteps(task_pb2.ListTaskStepsRequest(task_id=waiting.task_id))
    assert [s.path for s in steps.steps] == ["root", "root/w", "root/say"]
    await client.channel.close()


async def test_a_queued_task_of_a_deleted_workflow_runs_when_a_replica_takes_it(server_factory, shared_store):
    """Submitted to a replica with no room; deleted; a fresh replica takes it from the queue."""
    first = await server_factory(store=shared_store, limits=Limits(max_tasks_in_flight=1))
    client = client_for(first)
    await create(client, workflow("blocker", step("nap", "sleep", "{'ms': 2000}")))
    await create(client, workflow("queued", step("say", "echo")))
    blocker = await submit(client, "blocker")
    await until_status(client, blocker.task_id, S.TASK_STATUS_RUNNING)
    queued = await submit(client, "queued", {"who": "ada"})
    assert (
        await client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=queued.task_id))
    ).task.status == S.TASK_STATUS_PENDING
    await delete(client, "queued")
    await first.stop(0.5)
    await client.channel.close()

    second = await server_factory(store=shared_store)
    client = client_for(second)
    done = await wait_done(client, queued.task_id, timeout=15)
    assert done.status == S.TASK_STATUS_COMPLETED, done.error
    await client.channel.close()


async def test_nothing_new_starts_from_a_deleted_workflow_and_its_versions_read_back(server_factory, store_url):
    client = client_for(await server_factory(store=store_url))
    await create(client, workflow("gone", step("say", "echo")))
    ran = await wait_done(client, (await submit(client, "gone", {"who": "ada"})).task_id)
    assert await delete(client, "gone") == 1

    for pinned in (0, 1):  # the latest, and the version by number
        error = await refused(submit(client, "gone", {"who": "ada"}, workflow_version=pinned))
        assert (error.code(), error_reason(error)) == (grpc.StatusCode.NOT_FOUND, "WORKFLOW_NOT_FOUND")
    error = await refused(client.tasks.RerunTask(task_pb2.RerunTaskRequest(task_id=ran.task_id)))
    assert (error.code(), error_reason(error)) == (grpc.StatusCode.NOT_FOUND, "WORKFLOW_NOT_FOUND")
    parent = workflow("parent", {"id": "sub", "subworkflow": {"workflow_id": "gone", "version": 1}})
    error = await refused(create(client, parent))
    assert "workflow 'gone' version 1 was deleted" in str(error.details())

    # what its tasks ran reads back, marked deleted; the latest and the list no longer show it
    by_version = await client.workflows.GetWorkflow(workflow_pb2.GetWorkflowRequest(workflow_id="gone", version=1))
    assert by_version.workflow.HasField("delete_time") and by_version.workflow.root.id == "say"
    error = await refused(client.workflows.GetWorkflow(workflow_pb2.GetWorkflowRequest(workflow_id="gone")))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    listed = await client.workflows.ListWorkflows(workflow_pb2.ListWorkflowsRequest())
    assert "gone" not in [w.workflow_id for w in listed.workflows]
    assert (
        await refused(client.workflows.DeleteWorkflow(workflow_pb2.DeleteWorkflowRequest(workflow_id="gone")))
    ).code() == grpc.StatusCode.NOT_FOUND

    # made again, it numbers on: version 1 still names what the old task ran
    again = await create(client, workflow("gone", step("again", "echo")))
    assert again.version == 2
    assert (
        await refused(submit(client, "gone", {"who": "ada"}, workflow_version=1))
    ).code() == grpc.StatusCode.NOT_FOUND
    fresh = await wait_done(client, (await submit(client, "gone", {"who": "ada"})).task_id)
    assert (fresh.status, fresh.workflow_version) == (S.TASK_STATUS_COMPLETED, 2)
    # a task of the deleted version reruns under a version that is not
    rerun = await client.tasks.RerunTask(task_pb2.RerunTaskRequest(task_id=ran.task_id, workflow_version=2))
    assert (rerun.created, rerun.task.workflow_version) == (True, 2)
    assert (await wait_done(client, rerun.task.task_id)).status == S.TASK_STATUS_COMPLETED


async def test_a_deleted_workflow_is_purged_once_its_tasks_are_and_its_numbers_stay_taken(server_factory, store_url):
    """A waiting task keeps its deleted workflow's versions readable; once it has finished and
    been purged (past the retention), the server purges the versions too, on its own: GetWorkflow
    of them answers NOT_FOUND, and a new create of the id numbers on after them."""
    server = await server_factory(store=store_url, lease_seconds=1.5, retention_seconds=0.5)  # purges every 5 s
    client = client_for(server)
    await create(client, workflow("retiring", WAITS))
    waiting = await submit(client, "retiring", {"who": "ada"})
    await until_status(client, waiting.task_id, S.TASK_STATUS_WAITING)
    assert await delete(client, "retiring") == 1
    await asyncio.sleep(6)  # a purge round past the retention: its task still waits
    version = workflow_pb2.GetWorkflowRequest(workflow_id="retiring", version=1)
    assert (await client.workflows.GetWorkflow(version)).workflow.HasField("delete_time")

    await client.tasks.SignalTask(task_pb2.SignalTaskRequest(task_id=waiting.task_id, signal="go"))
    assert (await wait_done(client, waiting.task_id)).status == S.TASK_STATUS_COMPLETED
    async with asyncio.timeout(20):  # the task's purge, then the workflow's
        while True:
            try:
                await client.workflows.GetWorkflow(version)
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.NOT_FOUND and error_reason(exc) == "WORKFLOW_NOT_FOUND"
                break
            await asyncio.sleep(0.2)
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=waiting.task_id))
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND
    assert (await create(client, workflow("retiring", WAITS))).version == 2
