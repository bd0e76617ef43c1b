"""One owner cannot fill the queue for everyone (MCP_LIMIT_MAX_QUEUED_PER_OWNER, and in bytes
MCP_LIMIT_MAX_QUEUED_BYTES_PER_OWNER), on both stores, over the public API with two principals:
past its share an owner's submissions are refused with RESOURCE_EXHAUSTED `OWNER_QUEUE_FULL` while
another owner's are still taken; a retried submission is answered with its task; a place comes
back when one of the owner's tasks leaves the queue, whether cancelled or claimed by a replica."""

from __future__ import annotations

import asyncio
import sqlite3

import grpc
import pytest

from mcp_sdk.errors import McpError
from mcp_sdk.proto import task_pb2, task_pb2_grpc, workflow_pb2, workflow_pb2_grpc
from mcp_server.settings import Limits
from tests.helpers import bearer, error_reason, principals_file, step, workflow

pytestmark = pytest.mark.asyncio
S = task_pb2.TaskStatus
SHARE = 3
ROLES = {"big": [], "small": [], "writer": ["author"]}


class Tenants:
    """The API as each principal sees it, over one channel."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.tasks = task_pb2_grpc.TaskServiceStub(channel)
        self.workflows = workflow_pb2_grpc.WorkflowServiceStub(channel)

    async def create(self) -> None:
        request = workflow_pb2.CreateWorkflowRequest(workflow=workflow("shared-queue", step("s", "echo")))
        await self.workflows.CreateWorkflow(request, metadata=bearer("writer"))

    async def submit(self, name: str, request_id: str = "", text: str = "") -> task_pb2.SubmitTaskResponse:
        request = task_pb2.SubmitTaskRequest(workflow_id="shared-queue", request_id=request_id)
        if text:
            request.input_data.update({"text": text})
        response: task_pb2.SubmitTaskResponse = await self.tasks.SubmitTask(request, metadata=bearer(name))
        return response

    async def refused(self, name: str, text: str = "") -> grpc.aio.AioRpcError:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await self.submit(name, text=text)
        return err.value


async def run_elsewhere(server_factory, redis_url: str, auth: str, api: Tenants, tasks: list[task_pb2.Task]) -> None:
    """Another replica (one that runs tasks) claims and runs `tasks` (of "big"), then stops claiming."""
    runner = await server_factory(store=redis_url, auth_file=auth)
    async with asyncio.timeout(30):
        for task in tasks:
            while (
                await api.tasks.GetTask(task_pb2.GetTaskRequest(task_id=task.task_id), metadata=bearer("big"))
            ).task.status != S.TASK_STATUS_COMPLETED:
                await asyncio.sleep(0.05)
    await runner.orchestrator.dispatcher.stop(0)


async def test_an_owner_past_its_share_is_refused_and_others_are_still_taken(server_factory, store_url, tmp_path):
    # a replica that runs nothing (max_tasks_in_flight 0): every task stays queued
    limits = Limits(max_tasks_in_flight=0, max_queued_per_owner=SHARE, max_queue_length=100)
    running = await server_factory(store=store_url, auth_file=principals_file(tmp_path, ROLES), limits=limits)
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
        await api.tasks.CancelTask(task_pb2.CancelTaskRequest(task_id=queued[0].task_id), metadata=bearer("big"))
        await asyncio.sleep(0.2)
        assert (await api.submit("big")).task.status == S.TASK_STATUS_PENDING
        assert error_reason(await api.refused("big")) == "OWNER_QUEUE_FULL"


async def test_claimed_tasks_give_their_owner_places_back_across_replicas(server_factory, redis_url, tmp_path):
    """On Redis an owner's queued tasks are counted in the queue's scripts as they are queued,
    cancelled and claimed: here another replica claims and runs them."""
    auth = principals_file(tmp_path, ROLES)
    limits = Limits(max_tasks_in_flight=0, max_queued_per_owner=SHARE)
    front = await server_factory(store=redis_url, auth_file=auth, limits=limits)
    async with grpc.aio.insecure_channel(front.address) as channel:
        api = Tenants(channel)
        await api.create()
        first = [(await api.submit("big")).task for _ in range(SHARE)]
        assert error_reason(await api.refused("big")) == "OWNER_QUEUE_FULL"
        await run_elsewhere(server_factory, redis_url, auth, api, first)
        # another owner fills the queue to the share, so that owners' counts are read again
        for _ in range(SHARE):
            assert (await api.submit("small")).task.status == S.TASK_STATUS_PENDING
        await asyncio.sleep(0.2)
        # all three were claimed: the owner has its whole share again, and not more
        for _ in range(SHARE):
            assert (await api.submit("big")).task.status == S.TASK_STATUS_PENDING
        assert error_reason(await api.refused("big")) == "OWNER_QUEUE_FULL"


BIG = 150_000  # characters of input: stored beside the task (past the 64 KB inline limit), counted all the same
SMALL = 45_000  # stored inline, in the task's own record
BYTES_SHARE = 400_000


def refusal_share(error: grpc.aio.AioRpcError) -> dict[str, str]:
    read = McpError.from_rpc_error(error)
    assert read.reason == "OWNER_QUEUE_FULL", read
    return dict(read.metadata)


async def test_an_owner_past_its_share_of_bytes_is_refused_and_others_are_still_taken(
    server_factory, store_url, tmp_path
):
    """400 KB a owner: two tasks of 150 KB of input fit (stored beside their records), a third does
    not; small tasks still fit in what is left, until they would pass it; another owner is taken;
    a task larger than the whole share is refused even with nothing queued; a cancel gives the
    bytes back."""
    limits = Limits(max_tasks_in_flight=0, max_queued_bytes_per_owner=BYTES_SHARE)
    running = await server_factory(store=store_url, auth_file=principals_file(tmp_path, ROLES), limits=limits)
    async with grpc.aio.insecure_channel(running.address) as channel:
        api = Tenants(channel)
        await api.create()
        alone = await api.refused("small", text="x" * (BYTES_SHARE + 1))  # more than the share by itself
        assert refusal_share(alone) == {"share": "bytes", "limit": str(BYTES_SHARE)}
        big = [(await api.submit("big", f"b{i}", text="b" * BIG)).task for i in range(2)]
        assert all(t.status == S.TASK_STATUS_PENDING for t in big)
        assert big[0].HasField("input_ref")  # its input is a value beside the task: counted too
        refusal = await api.refused("big", text="b" * BIG)
        assert refusal.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert refusal_share(refusal) == {"share": "bytes", "limit": str(BYTES_SHARE)}
        assert "MCP_LIMIT_MAX_QUEUED_BYTES_PER_OWNER" in (refusal.details() or "")
        # 300 KB and a little more are queued: two 45 KB tasks fit, a third would pass the share
        assert (await api.submit("big", text="s" * SMALL)).task.status == S.TASK_STATUS_PENDING
        assert (await api.submit("big", text="s" * SMALL)).task.status == S.TASK_STATUS_PENDING
        assert refusal_share(await api.refused("big", text="s" * SMALL))["share"] == "bytes"
        # a retry of a stored submission is answered with its task, not refused
        again = await api.submit("big", "b1", text="b" * BIG)
        assert not again.created and again.task.task_id == big[1].task_id
        # another owner is not held back
        assert (await api.submit("small", text="b" * BIG)).task.status == S.TASK_STATUS_PENDING
        # a task that leaves the queue gives its bytes back (counts are at most 0.1 s old)
        await api.tasks.CancelTask(task_pb2.CancelTaskRequest(task_id=big[0].task_id), metadata=bearer("big"))
        await asyncio.sleep(0.2)
        assert (await api.submit("big", text="b" * BIG)).task.status == S.TASK_STATUS_PENDING
        assert refusal_share(await api.refused("big", text="b" * BIG))["share"] == "bytes"


async def test_claimed_tasks_give_their_owner_bytes_back_across_replicas(server_factory, redis_url, tmp_path):
    """On Redis an owner's queued bytes are counted in the queue's scripts beside its count (each
    task's header says what it stored): here another replica claims and runs the tasks."""
    auth = principals_file(tmp_path, ROLES)
    limits = Limits(max_tasks_in_flight=0, max_queued_bytes_per_owner=BYTES_SHARE)
    front = await server_factory(store=redis_url, auth_file=auth, limits=limits)
    async with grpc.aio.insecure_channel(front.address) as channel:
        api = Tenants(channel)
        await api.create()
        first = [(await api.submit("big", text="b" * BIG)).task for _ in range(2)]
        assert refusal_share(await api.refused("big", text="b" * BIG))["share"] == "bytes"
        await run_elsewhere(server_factory, redis_url, auth, api, first)
        await asyncio.sleep(0.2)
        # both were claimed: the owner has its whole share of bytes again, and not more
        for _ in range(2):
            assert (await api.submit("big", text="b" * BIG)).task.status == S.TASK_STATUS_PENDING
        assert refusal_share(await api.refused("big", text="b" * BIG))["share"] == "bytes"


async def test_an_sqlite_file_from_before_the_bytes_share_opens_and_counts_its_queued_tasks_as_0(
    server_factory, tmp_path
):
    store = f"sqlite:///{tmp_path}/old.db"
    auth = principals_file(tmp_path, ROLES)
    running = await server_factory(store=store, auth_file=auth, limits=Limits(max_tasks_in_flight=0))
    async with grpc.aio.insecure_channel(running.address) as channel:
        api = Tenants(channel)
        await api.create()
        before = [(await api.submit("big", text="b" * BIG)).task for _ in range(2)]
    await running.stop(0.5)
    with sqlite3.connect(tmp_path / "old.db") as db:  # the file as the server before the share left it
        db.execute("DROP INDEX tasks_queued_bytes_by_owner")
        db.execute("ALTER TABLE tasks DROP COLUMN queued_bytes")
        db.execute("CREATE INDEX tasks_queued_by_owner ON tasks (owner) WHERE queued = 1")
    limits = Limits(max_tasks_in_flight=0, max_queued_bytes_per_owner=BYTES_SHARE)
    running = await server_factory(store=store, auth_file=auth, limits=limits)
    async with grpc.aio.insecure_channel(running.address) as channel:
        api = Tenants(channel)
        for task in before:  # still queued, and readable
            read = await api.tasks.GetTask(task_pb2.GetTaskRequest(task_id=task.task_id), metadata=bearer("big"))
            assert read.task.status == S.TASK_STATUS_PENDING
        # the two from before count 0 bytes: two more fit, then the share is reached
        for _ in range(2):
            assert (await api.submit("big", text="b" * BIG)).task.status == S.TASK_STATUS_PENDING
        assert refusal_share(await api.refused("big", text="b" * BIG))["share"] == "bytes"


async def test_a_burst_through_one_replica_never_passes_a_share(server_factory, store_url, tmp_path):
    """40 submissions at once from an empty queue: exactly the share is taken, in tasks (5) and in
    bytes (two of 150 KB in 400 KB); the submissions under way count before they are stored."""
    limits = Limits(max_tasks_in_flight=0, max_queued_per_owner=5, max_queued_bytes_per_owner=BYTES_SHARE)
    running = await server_factory(store=store_url, auth_file=principals_file(tmp_path, ROLES), limits=limits)
    async with grpc.aio.insecure_channel(running.address) as channel:
        api = Tenants(channel)
        await api.create()

        async def taken(name: str, text: str) -> int:
            try:
                await api.submit(name, text=text)
            except grpc.aio.AioRpcError as err:
                assert refusal_share(err)["share"] == ("tasks" if not text else "bytes")
                return 0
            return 1

        assert sum(await asyncio.gather(*(taken("big", "") for _ in range(40)))) == 5
        assert sum(await asyncio.gather(*(taken("small", "b" * BIG) for _ in range(40)))) == 2
