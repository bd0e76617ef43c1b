"""TLS and mTLS (server and plugin calls), bearer-token authentication, per-principal task
isolation, roles, rate limits, and malformed request bytes."""

from __future__ import annotations

import asyncio
import json
import sys

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mcp_sdk.proto import (
    registry_pb2,
    registry_pb2_grpc,
    schedule_pb2,
    schedule_pb2_grpc,
    task_pb2,
    task_pb2_grpc,
    workflow_pb2,
    workflow_pb2_grpc,
)
from mcp_server.auth import hash_token
from mcp_server.settings import Limits
from tests.conftest import Client
from tests.helpers import error_reason, step, workflow
from tests.security.certs import make_pki

pytestmark = pytest.mark.asyncio
TOKENS = {
    "alice": "alice-secret",
    "bob": "bob-secret",
    "root": "root-secret",
    "writer": "writer-secret",
    "ops": "ops-secret",
}
ROLES = {"alice": [], "bob": [], "root": ["admin"], "writer": ["author"], "ops": ["operator"]}


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def secure_client(address: str, pki, with_client_cert: bool) -> Client:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.read_bytes(),
        private_key=pki.client_key.read_bytes() if with_client_cert else None,
        certificate_chain=pki.client_cert.read_bytes() if with_client_cert else None,
    )
    channel = grpc.aio.secure_channel(address, credentials)
    return Client(
        channel,
        task_pb2_grpc.TaskServiceStub(channel),
        workflow_pb2_grpc.WorkflowServiceStub(channel),
        registry_pb2_grpc.ProtocolRegistryStub(channel),
    )


async def test_tls_serves_tls_clients_and_refuses_plaintext(server_factory, pki):
    running = await server_factory(tls_cert=str(pki.server_cert), tls_key=str(pki.server_key))
    client = secure_client(running.address, pki, with_client_cert=False)
    listed = await client.registry.ListProtocols(registry_pb2.ListProtocolsRequest())
    assert listed.protocols
    async with grpc.aio.insecure_channel(running.address) as plain:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await registry_pb2_grpc.ProtocolRegistryStub(plain).ListProtocols(
                registry_pb2.ListProtocolsRequest(), timeout=3
            )
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    await client.channel.close()


async def test_mtls_requires_a_client_certificate_from_the_ca(server_factory, pki):
    running = await server_factory(
        tls_cert=str(pki.server_cert), tls_key=str(pki.server_key), tls_client_ca=str(pki.ca)
    )
    anonymous = secure_client(running.address, pki, with_client_cert=False)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await anonymous.registry.ListProtocols(registry_pb2.ListProtocolsRequest(), timeout=3)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    known = secure_client(running.address, pki, with_client_cert=True)
    assert (await known.registry.ListProtocols(registry_pb2.ListProtocolsRequest())).protocols
    await anonymous.channel.close()
    await known.channel.close()


async def test_plugin_calls_go_over_mtls(server_factory, pki):
    plugin = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "protocol_plugins.run",
        "protocol_plugins.writing",
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        str(pki.server_cert),
        "--tls-key",
        str(pki.server_key),
        "--tls-client-ca",
        str(pki.ca),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert plugin.stdout is not None
        address = (await plugin.stdout.readline()).decode().split()[1]
        running = await server_factory(
            session_plugins=False,
            plugin_tls_ca=str(pki.ca),
            plugin_tls_cert=str(pki.client_cert),
            plugin_tls_key=str(pki.client_key),
        )
        from tests.conftest import client_for
        from tests.helpers import run

        client = client_for(running)
        reply = await client.registry.RegisterProtocol(registry_pb2.RegisterProtocolRequest(address=address))
        assert "critique" in {p.manifest.name for p in reply.protocols}
        task = await run(
            client,
            workflow("tls-step", step("c", "critique")),
            {"text": "This is fine. In short, it works well enough."},
        )
        assert task.status == task_pb2.TASK_STATUS_COMPLETED, task.error
        await client.channel.close()
    finally:
        plugin.terminate()
        await plugin.wait()


@pytest.fixture
async def authed(server_factory, tmp_path):
    principals = [{"name": n, "token_sha256": hash_token(t), "roles": ROLES[n]} for n, t in TOKENS.items()]
    path = tmp_path / "principals.json"
    path.write_text(json.dumps({"principals": principals}))
    running = await server_factory(auth_file=str(path), limits=Limits(submissions_per_second=5))
    channel = grpc.aio.insecure_channel(running.address)
    yield running, channel
    await channel.close()


def as_user(name: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {TOKENS[name]}")]


async def test_missing_or_bad_tokens_are_unauthenticated_and_health_stays_open(authed):
    _, channel = authed
    tasks = task_pb2_grpc.TaskServiceStub(channel)
    for metadata, reason in (
        ([], "NO_TOKEN"),
        ([("authorization", "Bearer nope")], "BAD_TOKEN"),
        ([("authorization", "Basic x")], "NO_TOKEN"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await tasks.ListTasks(task_pb2.ListTasksRequest(), metadata=metadata)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED and error_reason(err.value) == reason
    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_a_signal_to_another_principals_task_is_not_found(authed):
    _, channel = authed
    tasks = task_pb2_grpc.TaskServiceStub(channel)
    workflows = workflow_pb2_grpc.WorkflowServiceStub(channel)
    waits = workflow("approved", {"id": "root", "sequence": {"children": [{"id": "ok", "wait": {"signal": "ok"}}]}})
    await workflows.CreateWorkflow(workflow_pb2.CreateWorkflowRequest(workflow=waits), metadata=as_user("writer"))
    alices = (
        await tasks.SubmitTask(task_pb2.SubmitTaskRequest(workflow_id="approved"), metadata=as_user("alice"))
    ).task
    request = task_pb2.SignalTaskRequest(task_id=alices.task_id, signal="ok", request_id="r")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await tasks.SignalTask(request, metadata=as_user("bob"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND  # indistinguishable from a task that does not exist
    reply = await tasks.SignalTask(request, metadata=as_user("alice"))
    assert reply.created


async def test_a_rerun_of_another_principals_task_is_not_found_and_keeps_its_owner(authed):
    _, channel = authed
    tasks = task_pb2_grpc.TaskServiceStub(channel)
    workflows = workflow_pb2_grpc.WorkflowServiceStub(channel)
    wf = workflow("echoed", {"id": "root", "sequence": {"children": [step("a", "echo"), step("b", "echo")]}})
    await workflows.CreateWorkflow(workflow_pb2.CreateWorkflowRequest(workflow=wf), metadata=as_user("writer"))
    alices = (await tasks.SubmitTask(task_pb2.SubmitTaskRequest(workflow_id="echoed"), metadata=as_user("alice"))).task
    async for _ in tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=alices.task_id), metadata=as_user("alice")):
        pass
    request = task_pb2.RerunTaskRequest(task_id=alices.task_id, from_step_path="root/b")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await tasks.RerunTask(request, metadata=as_user("bob"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND  # indistinguishable from a task that does not exist
    by_alice = (await tasks.RerunTask(request, metadata=as_user("alice"))).task
    by_root = (await tasks.RerunTask(request, metadata=as_user("root"))).task
    assert by_alice.owner == by_root.owner == "alice"  # a rerun has its original's owner, whoever asked
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await tasks.GetTask(task_pb2.GetTaskRequest(task_id=by_alice.task_id), metadata=as_user("bob"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_another_principals_task_cannot_be_deleted_and_an_admin_may_delete_any(authed):
    _, channel = authed
    tasks = task_pb2_grpc.TaskServiceStub(channel)
    workflows = workflow_pb2_grpc.WorkflowServiceStub(channel)
    await workflows.CreateWorkflow(
        workflow_pb2.CreateWorkflowRequest(workflow=workflow("kept", step("s", "echo"))), metadata=as_user("writer")
    )
    made = [
        (await tasks.SubmitTask(task_pb2.SubmitTaskRequest(workflow_id="kept"), metadata=as_user("alice"))).task
        for _ in range(2)
    ]
    for task in made:
        async for _ in tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=task.task_id), metadata=as_user("alice")):
            pass
    request = task_pb2.DeleteTaskRequest(task_id=made[0].task_id)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await tasks.DeleteTask(request, metadata=as_user("bob"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND  # indistinguishable from a task that does not exist
    missing = task_pb2.DeleteTaskRequest(task_id=made[0].task_id, allow_missing=True)
    assert (await tasks.DeleteTask(missing, metadata=as_user("bob"))).deleted is False
    got = await tasks.GetTask(task_pb2.GetTaskRequest(task_id=made[0].task_id), metadata=as_user("alice"))
    assert got.task.status == task_pb2.TASK_STATUS_COMPLETED  # bob's calls deleted nothing
    assert (await tasks.DeleteTask(request, metadata=as_user("alice"))).deleted is True
    other = task_pb2.DeleteTaskRequest(task_id=made[1].task_id)
    assert (await tasks.DeleteTask(other, metadata=as_user("root"))).deleted is True


async def test_tasks_are_isolated_per_principal_and_admins_see_all(authed):
    _, channel = authed
    tasks = task_pb2_grpc.TaskServiceStub(channel)
    workflows = workflow_pb2_grpc.WorkflowServiceStub(channel)
    await workflows.CreateWorkflow(
        workflow_pb2.CreateWorkflowRequest(workflow=workflow("mine", step("s", "echo"))), metadata=as_user("writer")
    )
    alices = (await tasks.SubmitTask(task_pb2.SubmitTaskRequest(workflow_id="mine"), metadata=as_user("alice"))).task
    assert alices.owner == "alice"
    for call in (
        tasks.GetTask(task_pb2.GetTaskRequest(task_id=alices.task_id), metadata=as_user("bob")),
        tasks.CancelTask(task_pb2.CancelTaskRequest(task_id=alices.task_id), metadata=as_user("bob")),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.NOT_FOUND  # indistinguishable from a task that does not exist
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=alices.task_id), metadata=as_user("bob")):
            pass
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert (await tasks.ListTasks(task_pb2.ListTasksRequest(), metadata=as_user("bob"))).tasks == []
    bobs = (await tasks.SubmitTask(task_pb2.SubmitTaskRequest(workflow_id="mine"), metadata=as_user("bob"))).task
    assert [
        t.task_id for t in (await tasks.ListTasks(task_pb2.ListTasksRequest(), metadata=as_user("alice"))).tasks
    ] == [alices.task_id]
    everyone = {t.task_id for t in (await tasks.ListTasks(task_pb2.ListTasksRequest(), metadata=as_user("root"))).tasks}
    assert everyone == {alices.task_id, bobs.task_id}
    assert (
        await tasks.GetTask(task_pb2.GetTaskRequest(task_id=alices.task_id), metadata=as_user("root"))
    ).task.owner == "alice"


async def test_submit_and_watch_streams_only_the_caller_s_own_task(authed):
    """The same request id from two principals makes two tasks: each stream shows its caller's
    task only; without a token the call is refused before anything is submitted."""
    _, channel = authed
    tasks = task_pb2_grpc.TaskServiceStub(channel)
    workflows = workflow_pb2_grpc.WorkflowServiceStub(channel)
    await workflows.CreateWorkflow(
        workflow_pb2.CreateWorkflowRequest(workflow=workflow("followed", step("s", "echo"))), metadata=as_user("writer")
    )
    request = task_pb2.SubmitTaskRequest(workflow_id="followed", request_id="same-key")
    streams = {}
    for name in ("alice", "bob"):
        streams[name] = [r async for r in tasks.SubmitAndWatchTask(request, metadata=as_user(name))]
    alices, bobs = (streams[name][0].submitted.task for name in ("alice", "bob"))
    assert alices.owner == "alice" and bobs.owner == "bob" and alices.task_id != bobs.task_id
    assert {e.task_id for r in streams["bob"] for e in r.events} == {bobs.task_id}
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in tasks.SubmitAndWatchTask(
            task_pb2.SubmitTaskRequest(workflow_id="followed", request_id="no-token")
        ):
            pass
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    listed = (await tasks.ListTasks(task_pb2.ListTasksRequest(workflow_id="followed"), metadata=as_user("root"))).tasks
    assert {t.task_id for t in listed} == {alices.task_id, bobs.task_id}  # nothing submitted without a token


async def test_rate_limits_are_for_operators_and_admins(authed):
    _, channel = authed
    registry = registry_pb2_grpc.ProtocolRegistryStub(channel)
    limit = registry_pb2.RateLimit(key="protocol:echo", limit=5)
    limit.period.FromSeconds(1)
    put = registry_pb2.PutRateLimitRequest(rate_limit=limit)
    for call, request in (
        (registry.PutRateLimit, put),
        (registry.ListRateLimits, registry_pb2.ListRateLimitsRequest()),
        (registry.GetRateLimit, registry_pb2.GetRateLimitRequest(key="protocol:echo")),
        (registry.DeleteRateLimit, registry_pb2.DeleteRateLimitRequest(key="protocol:echo")),
    ):
        for who in ("alice", "writer"):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call(request, metadata=as_user(who))
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert (await registry.PutRateLimit(put, metadata=as_user("ops"))).key == "protocol:echo"
    listed = await registry.ListRateLimits(registry_pb2.ListRateLimitsRequest(), metadata=as_user("root"))
    assert [r.key for r in listed.rate_limits] == ["protocol:echo"]
    got = await registry.GetRateLimit(registry_pb2.GetRateLimitRequest(key="protocol:echo"), metadata=as_user("ops"))
    assert got.available == 5
    await registry.DeleteRateLimit(registry_pb2.DeleteRateLimitRequest(key="protocol:echo"), metadata=as_user("ops"))


async def test_workflow_and_registry_changes_need_their_roles(authed):
    _, channel = authed
    workflows = workflow_pb2_grpc.WorkflowServiceStub(channel)
    registry = registry_pb2_grpc.ProtocolRegistryStub(channel)
    create = workflow_pb2.CreateWorkflowRequest(workflow=workflow("roles", step("s", "echo")))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await workflows.CreateWorkflow(create, metadata=as_user("alice"))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and error_reason(err.value) == "MISSING_ROLE"
    assert (await workflows.CreateWorkflow(create, metadata=as_user("writer"))).workflow.version == 1
    assert (
        await workflows.GetWorkflow(workflow_pb2.GetWorkflowRequest(workflow_id="roles"), metadata=as_user("alice"))
    ).workflow
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await registry.DeregisterProtocol(
            registry_pb2.DeregisterProtocolRequest(name="echo"), metadata=as_user("writer")
        )
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert (
        await registry.DeregisterProtocol(registry_pb2.DeregisterProtocolRequest(name="echo"), metadata=as_user("ops"))
    ).removed == 1


async def test_submissions_per_principal_are_rate_limited(authed):
    _, channel = authed
    tasks = task_pb2_grpc.TaskServiceStub(channel)
    await workflow_pb2_grpc.WorkflowServiceStub(channel).CreateWorkflow(
        workflow_pb2.CreateWorkflowRequest(workflow=workflow("rate", step("s", "echo"))), metadata=as_user("root")
    )
    accepted, limited = 0, None
    for _ in range(30):
        try:
            await tasks.SubmitTask(task_pb2.SubmitTaskRequest(workflow_id="rate"), metadata=as_user("alice"))
            accepted += 1
        except grpc.aio.AioRpcError as exc:
            limited = exc
            break
    assert (
        limited is not None
        and limited.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        and error_reason(limited) == "RATE_LIMITED"
    )
    assert 5 <= accepted <= 12  # a burst of 10, refilled at 5 per second while we submit
    # another principal has its own bucket
    await tasks.SubmitTask(task_pb2.SubmitTaskRequest(workflow_id="rate"), metadata=as_user("bob"))


async def test_malformed_request_bytes_are_invalid_argument_not_internal(server):
    async with grpc.aio.insecure_channel(server.address) as channel:
        raw = channel.unary_unary(
            "/mcp.v1.TaskService/GetTask", request_serializer=lambda b: b, response_deserializer=lambda b: b
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await raw(b"\xff\xff\xff\xff\x0f not protobuf")
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a valid GetTask message" in err.value.details()


async def test_field_rules_declared_in_the_protos_are_enforced_at_the_edge(client):
    from tests.helpers import violations

    rules = task_pb2.SubmitTaskRequest.DESCRIPTOR.fields_by_name["workflow_id"].GetOptions()
    from mcp_sdk.proto import validate_pb2

    assert rules.Extensions[validate_pb2.rules].max_len == 128  # readable by any client from the contract
    cases = [
        (client.tasks.SubmitTask(task_pb2.SubmitTaskRequest(workflow_id="bad id!")), "workflow_id", "must match"),
        (client.tasks.GetTask(task_pb2.GetTaskRequest(task_id="x" * 100)), "task_id", "at most 64"),
        (client.tasks.ListTasks(task_pb2.ListTasksRequest(page_size=20000)), "page_size", "at most 10000"),
        (
            client.tasks.SubmitTask(
                task_pb2.SubmitTaskRequest(workflow_id="w", labels={str(i): "v" for i in range(70)})
            ),
            "labels",
            "entries",
        ),
        (
            client.workflows.CreateWorkflow(
                workflow_pb2.CreateWorkflowRequest(workflow=workflow("ok", step("s", "echo"), description="d" * 5000))
            ),
            "workflow.description",
            "at most 4096",
        ),
        (
            client.registry.RegisterProtocol(registry_pb2.RegisterProtocolRequest(address="no port")),
            "address",
            "must match",
        ),
    ]
    for call, field, why in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        found = violations(err.value)
        assert field in found and why in found[field], (field, found)


async def test_messages_over_the_size_limit_are_refused(server_factory):
    from tests.conftest import client_for

    running = await server_factory(limits=Limits(max_message_bytes=64 * 1024, max_input_bytes=1024 * 1024))
    client = client_for(running)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.workflows.ValidateWorkflow(
            workflow_pb2.ValidateWorkflowRequest(
                workflow=workflow("big", step("s", "echo"), labels={f"k{i}": "v" * 1000 for i in range(100)})
            )
        )
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    await client.channel.close()


async def test_schedules_belong_to_their_owner_and_their_tasks_run_as_the_owner(authed):
    _, channel = authed
    schedules = schedule_pb2_grpc.ScheduleServiceStub(channel)
    tasks = task_pb2_grpc.TaskServiceStub(channel)
    workflows = workflow_pb2_grpc.WorkflowServiceStub(channel)
    await workflows.CreateWorkflow(
        workflow_pb2.CreateWorkflowRequest(workflow=workflow("clocked", step("s", "echo"))), metadata=as_user("writer")
    )
    schedule = schedule_pb2.Schedule(
        schedule_id="alices-clock",
        spec=schedule_pb2.ScheduleSpec(cron=["0 4 * * *"]),
        action=task_pb2.SubmitTaskRequest(workflow_id="clocked"),
    )
    made = await schedules.CreateSchedule(
        schedule_pb2.CreateScheduleRequest(schedule=schedule), metadata=as_user("alice")
    )
    assert made.owner == "alice"
    for call, request in (
        (schedules.GetSchedule, schedule_pb2.GetScheduleRequest(schedule_id="alices-clock")),
        (schedules.TriggerSchedule, schedule_pb2.TriggerScheduleRequest(schedule_id="alices-clock")),
        (schedules.DeleteSchedule, schedule_pb2.DeleteScheduleRequest(schedule_id="alices-clock")),
        (
            schedules.UpdateSchedule,
            schedule_pb2.UpdateScheduleRequest(schedule=schedule_pb2.Schedule(schedule_id="alices-clock", paused=True)),
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(request, metadata=as_user("bob"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    bobs = await schedules.ListSchedules(schedule_pb2.ListSchedulesRequest(), metadata=as_user("bob"))
    assert list(bobs.schedules) == []
    everyone = await schedules.ListSchedules(schedule_pb2.ListSchedulesRequest(), metadata=as_user("root"))
    assert [s.schedule_id for s in everyone.schedules] == ["alices-clock"]
    # triggered by an admin, the task still runs as the schedule's owner
    task = (
        await schedules.TriggerSchedule(
            schedule_pb2.TriggerScheduleRequest(schedule_id="alices-clock"), metadata=as_user("root")
        )
    ).task
    assert task.owner == "alice"
    seen = await tasks.GetTask(task_pb2.GetTaskRequest(task_id=task.task_id), metadata=as_user("alice"))
    assert seen.task.labels["mcp/schedule"] == "alices-clock"
