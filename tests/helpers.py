"""Helpers for tests: build workflows from dicts, run tasks to the end, read error details."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from mcp_sdk.errors import McpError
from mcp_sdk.proto import bulk_pb2, events_pb2, protocol_pb2, protocol_pb2_grpc, registry_pb2, task_pb2, workflow_pb2
from mcp_server.auth import hash_token
from mcp_server.engine.values import struct_to_dict

TERMINAL = {task_pb2.TASK_STATUS_COMPLETED, task_pb2.TASK_STATUS_FAILED, task_pb2.TASK_STATUS_CANCELLED}


def workflow(workflow_id: str, root: dict[str, Any], **extra: Any) -> workflow_pb2.Workflow:
    return json_format.ParseDict({"workflow_id": workflow_id, "root": root, **extra}, workflow_pb2.Workflow())


def seq(node_id: str, *children: dict[str, Any]) -> dict[str, Any]:
    """A sequence node of `children`."""
    return {"id": node_id, "sequence": {"children": list(children)}}


def step(node_id: str, protocol: str, input_expr: str = "", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"protocol": protocol, **extra}
    if input_expr:
        body["input"] = input_expr
    return {"id": node_id, "step": body}


async def create(client: Any, wf: workflow_pb2.Workflow) -> workflow_pb2.Workflow:
    reply = await client.workflows.CreateWorkflow(workflow_pb2.CreateWorkflowRequest(workflow=wf))
    return reply.workflow


async def submit(client: Any, workflow_id: str, data: dict[str, Any] | None = None, **kwargs: Any) -> task_pb2.Task:
    request = task_pb2.SubmitTaskRequest(workflow_id=workflow_id, **kwargs)
    if data:
        request.input_data.update(data)
    return (await client.tasks.SubmitTask(request)).task


async def wait_done(client: Any, task_id: str, timeout: float = 30.0) -> task_pb2.Task:
    """Follow the task's events until its terminal event, then return the task."""
    async with asyncio.timeout(timeout):
        async for _ in client.tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=task_id)):
            pass
    task = (await client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=task_id))).task
    assert task.status in TERMINAL, task
    return task


async def run(
    client: Any, wf: workflow_pb2.Workflow, data: dict[str, Any] | None = None, timeout: float = 30.0
) -> task_pb2.Task:
    await create(client, wf)
    task = await submit(client, wf.workflow_id, data)
    return await wait_done(client, task.task_id, timeout)


async def events(client: Any, task_id: str, after: int = 0) -> list[task_pb2.TaskEvent]:
    return [e async for e in client.tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=task_id, after_sequence=after))]


def result(task: task_pb2.Task) -> Any:
    return json_format.MessageToDict(task.result)


def step_states(task: task_pb2.Task) -> dict[str, task_pb2.StepState]:
    return {s.path: s for s in task.steps}


def violations(error: grpc.aio.AioRpcError) -> dict[str, str]:
    """The BadRequest field violations carried in an error's google.rpc.Status details."""
    return {v.field: v.description for v in McpError.from_rpc_error(error).violations}


async def refused(call: Any) -> grpc.aio.AioRpcError:
    """The error a call that must fail answered."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def error_reason(error: grpc.aio.AioRpcError) -> str:
    """The ErrorInfo reason of an error ("" when it carries none)."""
    read = McpError.from_rpc_error(error)
    return read.reason if read.domain else ""


async def protocol_listed(client: Any, name: str) -> bool:
    """Whether ListProtocols lists an instance of protocol `name`."""
    listing = await client.registry.ListProtocols(registry_pb2.ListProtocolsRequest())
    return name in {p.manifest.name for p in listing.protocols}


async def plugin_stats(testkit: protocol_pb2_grpc.ProtocolServiceStub, protocol: str = "stats") -> dict[str, Any]:
    reply = await testkit.Execute(protocol_pb2.ExecuteRequest(protocol=protocol))
    return struct_to_dict(reply.output)


async def until_plugin_called(
    plugin: protocol_pb2_grpc.ProtocolServiceStub, task_id: str, protocol: str = "stats", timeout: float = 20.0
) -> None:
    """Wait until the plugin's stats protocol lists a call of the task (keys start with the task id),
    so a test cancels or kills what has really reached the plugin, however slow the machine."""
    async with asyncio.timeout(timeout):
        while not any(key.startswith(task_id) for key in (await plugin_stats(plugin, protocol))["calls"]):
            await asyncio.sleep(0.02)


def principals_file(tmp_path: Path, roles: dict[str, list[str]]) -> str:
    """A principals file naming each of `roles`' principals with its roles; its token is
    `<name>-secret` (see `bearer`)."""
    principals = [{"name": n, "token_sha256": hash_token(f"{n}-secret"), "roles": r} for n, r in roles.items()]
    path = tmp_path / "principals.json"
    path.write_text(json.dumps({"principals": principals}))
    return str(path)


def bearer(name: str) -> list[tuple[str, str]]:
    """The call metadata of principal `name` of a `principals_file`."""
    return [("authorization", f"Bearer {name}-secret")]


async def failed_tasks(client: Any, workflow_id: str, count: int) -> list[str]:
    """`count` ended tasks of a new one-step workflow `workflow_id` whose step fails; a submission
    a rate limit refuses is sent again until it passes."""
    await create(client, workflow(workflow_id, step("f", "fail", "{'code': 'INVALID_ARGUMENT'}")))
    made: list[str] = []
    while len(made) < count:
        try:
            made.append((await submit(client, workflow_id)).task_id)
        except grpc.aio.AioRpcError as refusal:
            if refusal.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise
            await asyncio.sleep(0.05)
    for task_id in made:
        await wait_done(client, task_id)
    return made


async def bulk_action_ended(client: Any, action_id: str, timeout: float = 60) -> bulk_pb2.BulkAction:
    """The bulk action once it is no longer RUNNING."""
    request = bulk_pb2.GetBulkActionRequest(action_id=action_id)
    async with asyncio.timeout(timeout):
        while (action := await client.bulk_actions.GetBulkAction(request)).state == bulk_pb2.BULK_ACTION_STATE_RUNNING:
            await asyncio.sleep(0.05)
    return action


async def parked(client: Any, task_id: str, running: Any = None, timeout: float = 10) -> None:
    """Once the task is WAITING (and, given the server `running` it, once no run of it is in memory
    there: parked, its next life to start from the store)."""
    request = task_pb2.GetTaskRequest(task_id=task_id)
    async with asyncio.timeout(timeout):
        while (await client.tasks.GetTask(request)).task.status != task_pb2.TASK_STATUS_WAITING:
            await asyncio.sleep(0.02)
        while running is not None and running.orchestrator.dispatcher.in_flight:
            await asyncio.sleep(0.02)


def publish_request(name: str, data: dict[str, Any] | None = None, **fields: Any) -> events_pb2.PublishEventRequest:
    request = events_pb2.PublishEventRequest(name=name, **fields)
    if data:
        request.data.update(data)
    return request


async def step_waiting(client: Any, task_id: str, metadata: Any = None, timeout: float = 10) -> None:
    """Once a step of the task waits: its STEP_SUSPENDED is written (a wait for an event is then
    in the store's index, where a publish finds it)."""
    request = task_pb2.GetTaskRequest(task_id=task_id)
    async with asyncio.timeout(timeout):
        while not any(
            s.status == task_pb2.STEP_STATUS_WAITING
            for s in (await client.tasks.GetTask(request, metadata=metadata)).task.steps
        ):
            await asyncio.sleep(0.02)
