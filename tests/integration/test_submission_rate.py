"""Submission rate limits shared by every replica: an operator puts a rate limit on `submit`
(every principal's submissions together) or `submit:<principal>` (one principal's), and past it
SubmitTask, RunTask, SubmitAndWatchTask and RerunTask are refused RESOURCE_EXHAUSTED
`RATE_LIMITED`, with the key and a google.rpc.RetryInfo saying when to try again; other
principals go on. On both stores, over the public API with real principals, and through two
replicas on one Redis."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from google.protobuf import duration_pb2

from mcp_sdk.client import Client
from mcp_sdk.errors import McpError
from mcp_sdk.proto import registry_pb2, registry_pb2_grpc, task_pb2, task_pb2_grpc, workflow_pb2, workflow_pb2_grpc
from mcp_sdk.sync import SyncClient
from tests.helpers import bearer, principals_file, step, workflow
from tests.integration.test_rate_limits import limit_known

pytestmark = pytest.mark.asyncio
S = task_pb2.TaskStatus
ROLES = {"alice": ["author"], "bob": [], "ops": ["operator"]}


class Api:
    """The API as each principal sees it, over one channel."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.tasks = task_pb2_grpc.TaskServiceStub(channel)
        self.workflows = workflow_pb2_grpc.WorkflowServiceStub(channel)
        self.registry = registry_pb2_grpc.ProtocolRegistryStub(channel)

    async def create(self) -> None:
        request = workflow_pb2.CreateWorkflowRequest(workflow=workflow("rated", step("s", "echo")))
        await self.workflows.CreateWorkflow(request, metadata=bearer("alice"))

    async def put_limit(self, key: str, limit: float, period_seconds: int) -> None:
        limit_message = registry_pb2.RateLimit(
            key=key, limit=limit, period=duration_pb2.Duration(seconds=period_seconds)
        )
        await self.registry.PutRateLimit(
            registry_pb2.PutRateLimitRequest(rate_limit=limit_message), metadata=bearer("ops")
        )

    async def delete_limit(self, key: str) -> None:
        await self.registry.DeleteRateLimit(registry_pb2.DeleteRateLimitRequest(key=key), metadata=bearer("ops"))

    async def submit(self, name: str) -> task_pb2.Task:
        request = task_pb2.SubmitTaskRequest(workflow_id="rated")
        return (await self.tasks.SubmitTask(request, metadata=bearer(name))).task

    async def refused(self, name: str, how: str = "submit") -> McpError:
        request = task_pb2.SubmitTaskRequest(workflow_id="rated")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            if how == "submit":
                await self.tasks.SubmitTask(request, metadata=bearer(name))
            elif how == "run":
                await self.tasks.RunTask(request, metadata=bearer(name))
            else:
                async for _ in self.tasks.SubmitAndWatchTask(request, metadata=bearer(name)):
                    pass
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value
        return McpError.from_rpc_error(err.value)

    async def ended(self, task_id: str) -> task_pb2.Task:
        async with asyncio.timeout(30):
            while True:
                task = (
                    await self.tasks.GetTask(task_pb2.GetTaskRequest(task_id=task_id), metadata=bearer("alice"))
                ).task
                if task.status == S.TASK_STATUS_COMPLETED:
                    return task
                await asyncio.sleep(0.02)


@pytest.fixture
async def api(server_factory, store_url, tmp_path):
    """One server (either store) with the principals, and the workflow to submit."""
    running = await server_factory(store=store_url, auth_file=principals_file(tmp_path, ROLES))
    async with grpc.aio.insecure_channel(running.address) as channel:
        made = Api(channel)
        await made.create()
        yield made


def rate_limited(error: McpError, key: str, period: float) -> bool:
    return (
        error.reason == "RATE_LIMITED"
        and error.metadata.get("key") == key
        and error.retry_after is not None
        and 0 < error.retry_after <= period
        and key in error.message
    )


async def test_a_principal_past_its_limit_is_refused_on_every_way_in_and_others_go_on(api):
    await api.put_limit("submit:alice", 2, 60)
    first = await api.submit("alice")
    await api.submit("alice")
    for how in ("submit", "run", "submit-watch"):
        assert rate_limited(await api.refused("alice", how), "submit:alice", 60)
    # a rerun is a submission too
    await api.ended(first.task_id)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.tasks.RerunTask(task_pb2.RerunTaskRequest(task_id=first.task_id), metadata=bearer("alice"))
    assert rate_limited(McpError.from_rpc_error(err.value), "submit:alice", 60)
    # another principal is not held back
    for _ in range(3):
        assert (await api.submit("bob")).task_id
    # the limit gone, alice submits again (this replica learns of its own changes at once)
    await api.delete_limit("submit:alice")
    assert (await api.submit("alice")).task_id


async def test_the_submit_key_limits_every_principal_together(api):
    await api.put_limit("submit", 3, 60)
    for name in ("alice", "bob", "alice"):
        await api.submit(name)
    assert rate_limited(await api.refused("bob"), "submit", 60)
    assert rate_limited(await api.refused("alice"), "submit", 60)


async def test_two_replicas_share_one_submission_limit_exactly(server_factory, redis_url, tmp_path):
    auth = principals_file(tmp_path, ROLES)
    replicas = [await server_factory(store=redis_url, auth_file=auth) for _ in range(2)]
    channels = [grpc.aio.insecure_channel(r.address) for r in replicas]
    apis = [Api(c) for c in channels]
    await apis[0].create()
    await apis[0].put_limit("submit:alice", 5, 60)
    await limit_known(replicas, "submit:alice")

    async def attempt(i: int) -> bool:
        try:
            await apis[i % 2].submit("alice")
            return True
        except grpc.aio.AioRpcError as err:
            assert rate_limited(McpError.from_rpc_error(err), "submit:alice", 60), err
            return False

    outcomes = await asyncio.gather(*(attempt(i) for i in range(24)))
    assert sum(outcomes) == 5
    for channel in channels:
        await channel.close()


async def test_without_principals_the_anonymous_key_limits_every_submission(server_factory, store_url):
    running = await server_factory(store=store_url)
    async with grpc.aio.insecure_channel(running.address) as channel:
        tasks = task_pb2_grpc.TaskServiceStub(channel)
        request = workflow_pb2.CreateWorkflowRequest(workflow=workflow("rated", step("s", "echo")))
        await workflow_pb2_grpc.WorkflowServiceStub(channel).CreateWorkflow(request)
        limit = registry_pb2.RateLimit(key="submit:", limit=1, period=duration_pb2.Duration(seconds=60))
        await registry_pb2_grpc.ProtocolRegistryStub(channel).PutRateLimit(
            registry_pb2.PutRateLimitRequest(rate_limit=limit)
        )
        await tasks.SubmitTask(task_pb2.SubmitTaskRequest(workflow_id="rated"))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await tasks.SubmitTask(task_pb2.SubmitTaskRequest(workflow_id="rated"))
        assert rate_limited(McpError.from_rpc_error(err.value), "submit:", 60)


async def test_the_submit_template_gives_each_principal_its_own_limit(api):
    await api.put_limit("submit:*", 2, 60)
    await api.put_limit("submit:bob", 3, 60)  # bob's own limit comes before the template
    for name in ("alice", "alice", "bob", "bob", "bob"):
        await api.submit(name)
    assert rate_limited(await api.refused("alice"), "submit:alice", 60)
    assert rate_limited(await api.refused("bob"), "submit:bob", 60)


async def test_a_limit_that_can_never_grant_one_submission_says_so(api):
    await api.put_limit("submit:alice", 0.5, 60)  # limit + burst below one unit
    refused = await api.refused("alice")
    assert refused.reason == "RATE_LIMITED" and refused.metadata.get("key") == "submit:alice"
    assert "grants less than one submission at a time" in refused.message and refused.retry_after is None


async def test_the_sdk_waits_out_a_submission_limit_when_asked_and_submits_once(server_factory, store_url):
    """`rate_limited_wait`: submit and rerun ask again when the refusal's retry time comes, with
    the same request id (one task each); a retry time past the wait, or none at all, raises at
    once. run() honours the retry time within its budget the same way."""
    running = await server_factory(store=store_url)
    ops = Client(running.address)
    await ops.create_workflow(workflow("rated", step("s", "echo")))
    await ops.put_rate_limit("submit:", 1, 1.0)

    def read_blocking() -> float:  # the blocking client, off this loop (the server runs on it)
        with SyncClient(running.address) as sync:
            return sync.get_rate_limit("submit:").limit

    assert await asyncio.to_thread(read_blocking) == 1
    patient = Client(running.address, rate_limited_wait=5)
    try:
        await ops.submit("rated")
        with pytest.raises(McpError) as err:
            await ops.submit("rated")  # no wait asked: refused at once
        assert rate_limited(err.value, "submit:", 1)
        submitted = [await patient.submit("rated", request_id=f"r{i}") for i in range(3)]
        assert len({t.task_id for t in submitted}) == 3
        listed = (await ops.list_tasks(workflow_id="rated", page_size=100)).tasks
        assert len(listed) == 4  # each submission once, however often it was asked
        assert await patient.run("rated", {"x": 1}, timeout=20) == {"x": 1}
        rerun = await patient.rerun(submitted[0].task_id)
        assert rerun.rerun_of == submitted[0].task_id

        await ops.put_rate_limit("submit:", 1, 30.0)  # the grants of the last 30 s count on: spent
        began = time.monotonic()
        with pytest.raises(McpError) as err:
            await patient.submit("rated")  # the retry time (~30 s) is past the 5 s it may wait
        assert rate_limited(err.value, "submit:", 30) and time.monotonic() - began < 5
        impatient_run = Client(running.address, watch_give_up_after=5)
        with pytest.raises(McpError) as err:
            await impatient_run.run("rated", timeout=20)  # raised, not polled until the budget ends
        assert rate_limited(err.value, "submit:", 30) and time.monotonic() - began < 5
        await ops.put_rate_limit("submit:", 0.5, 60.0)  # can never grant one
        with pytest.raises(McpError) as err:
            await patient.run("rated", timeout=20)
        assert err.value.reason == "RATE_LIMITED" and err.value.retry_after is None
        await impatient_run.close()
    finally:
        await patient.close()
        await ops.close()
