"""One owner cannot fill the queue for everyone (MCP_LIMIT_MAX_QUEUED_PER_OWNER), on both stores,
over the public API with two principals: past its share an owner's submissions are refused with
RESOURCE_EXHAUSTED `OWNER_QUEUE_FULL` while another owner's are still taken; a retried submission
is answered with its task; a place comes back when one of the owner's tasks leaves the queue,
whether cancelled or claimed by a replica."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import pytest

from mcp_sdk.proto import task_pb2, task_pb2_grpc, workflow_pb2, workflow_pb2_grpc
from mcp_server.auth import hash_token
from mcp_server.settings import Limits
from tests.helpers import error_reason, step, workflow

pytestmark = pytest.mark.asyncio
S = task_pb2.TaskStatus
TOKENS = {"big": "big-secret", "small": "small-secret", "writer": "writer-secret"}
SHARE = 3


def principals_file(tmp_path: Path) -> str:
    roles = {"big": [], "small": [], "writer": ["author"]}
    principals = [{"name": n, "token_sha256": hash_token(TOKENS[n]), "roles": r} for n, r in roles.items()]
    path = tmp_path / "principals.json"
    path.write_text(json.dumps({"principals": principals}))
    return str(path)


def who(name: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {TOKENS[name]}")]


class Tenants:
    """The API as each principal sees it, over one channel."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.tasks = task_pb2_grpc.TaskServiceStub(channel)
        self.workflows = workflow_pb2_grpc.WorkflowServiceStub(channel)

    async def create(self) -> None:
        request = workflow_pb2.CreateWorkflowRequest(workflow=workflow("shared-queue", step("s", "echo")))
        await self.workflows.CreateWorkflow(request, metadata=who("writer"))

    async def submit(self, name: str, request_id: str = "") -> task_pb2.SubmitTaskResponse:
        request = task_pb2.SubmitTaskRequest(workflow_id="shared-queue", request_id=request_id)
        response: task_pb2.SubmitTaskResponse = await self.tasks.SubmitTask(request, metadata=who(name))
        return response

    async def refused(self, name: str) -> grpc.aio.AioRpcError:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await self.submit(name)
        return err.value


async def test_an_owner_past_its_share_is_refused_and_others_are_still_taken(server_factory, store_url, tmp_path):
    # a replica that runs nothing (max_tasks_in_flight 0): every task stays queued
    limits = Limits(max_tasks_in_flight=0, max_queued_per_owner=SHARE, max_queue_length=100)
    running = await server_factory(store=store_url, auth_file=principals_file(tmp_path), limits=limits)
    async with grpc.aio.insecure_channel(running.address) as channel:
        api = Tenants(channel)
        await api.create()
        queued = [(await api.submit("big", f"r{i}")).task for i in range(SHARE)]
        assert all(t.status == S.TASK_STATUS_PENDING for t in queued)
        refusal = await api.refused("big")
        assert refusal.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error_reason(refusal) == "OWNER_QUEUE_FULL"
        assert "MCP_LIMIT_MAX_QUEUED_PER_OWNER" in (refusal.details() or "")
        # a retry of a submission that was stored is answered with its task, not refused
        again = await api.submit("big", f"r{SHARE - 1}")
        assert not again.created and again.task.task_id == queued[-1].task_id
        # another owner is not held back by the first one's backlog
        assert (await api.submit("small")).task.status == S.TASK_STATUS_PENDING
        # a task that leaves the queue gives its owner's place back (counts are at most 0.1 s old)
        await api.tasks.CancelTask(task_pb2.CancelTaskRequest(task_id=queued[0].task_id), metadata=who("big"))
        await asyncio.sleep(0.2)
        assert (await api.submit("big")).task.status == S.TASK_STATUS_PENDING
        assert error_reason(await api.refused("big")) == "OWNER_QUEUE_FULL"


async def test_claimed_tasks_give_their_owner_places_back_across_replicas(server_factory, redis_url, tmp_path):
    """On Redis an owner's queued tasks are counted in the queue's scripts as they are queued,
    cancelled and claimed: here another replica claims and runs them."""
    auth = principals_file(tmp_path)
    limits = Limits(max_tasks_in_flight=0, max_queued_per_owner=SHARE)
    front = await server_factory(store=redis_url, auth_file=auth, limits=limits)
    async with grpc.aio.insecure_channel(front.address) as channel:
        api = Tenants(channel)
        await api.create()
        first = [(await api.submit("big")).task for _ in range(SHARE)]
        assert error_reason(await api.refused("big")) == "OWNER_QUEUE_FULL"
        runner = await server_factory(store=redis_url, auth_file=auth)  # a replica that runs tasks
        async with asyncio.timeout(30):
            for task in first:
                while (
                    await api.tasks.GetTask(task_pb2.GetTaskRequest(task_id=task.task_id), metadata=who("big"))
                ).task.status != S.TASK_STATUS_COMPLETED:
                    await asyncio.sleep(0.05)
        await runner.orchestrator.dispatcher.stop(0)
        # another owner fills the queue to the share, so that owners' counts are read again
        for _ in range(SHARE):
            assert (await api.submit("small")).task.status == S.TASK_STATUS_PENDING
        await asyncio.sleep(0.2)
        # all three were claimed: the owner has its whole share again, and not more
        for _ in range(SHARE):
            assert (await api.submit("big")).task.status == S.TASK_STATUS_PENDING
        assert error_reason(await api.refused("big")) == "OWNER_QUEUE_FULL"
