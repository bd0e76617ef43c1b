"""A wait's JSON Schema pattern against a hostile signal, from outside: a real server process,
so that a server stuck in a match shows as a missed deadline, not as a stuck test."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, struct_pb2

from mcp_sdk.proto import task_pb2
from tests.conftest import client_for
from tests.helpers import create, error_reason, submit, violations, workflow
from tests.integration.test_waits import until_status
from tests.support.processes import replica_set

pytestmark = pytest.mark.asyncio


def waits_for_code(workflow_id: str, schema: dict[str, Any]) -> Any:
    node = {"id": "w", "wait": {"signal": "code", "schema": schema}}
    return workflow(workflow_id, {"id": "root", "sequence": {"children": [node]}})


async def send(client: Any, task_id: str, payload: Any) -> task_pb2.SignalTaskResponse:
    request = task_pb2.SignalTaskRequest(task_id=task_id, signal="code")
    request.payload.CopyFrom(json_format.ParseDict(payload, struct_pb2.Value()))
    return await client.tasks.SignalTask(request, timeout=10)


async def test_a_schema_pattern_is_matched_in_linear_time_and_one_that_cannot_be_is_refused():
    """`^(a+)+$` against 40 a's and a '!' backtracks 2^40 times in Python's `re`: the signal's
    check held the event loop, and every task of the server, for hours. Patterns are matched by
    RE2 now; one it cannot run (lookahead, backreferences) is refused when the workflow is made."""
    async with replica_set(1, "sqlite://:memory:", [], "patterns") as (_, (client,)):
        schema = {"type": "object", "properties": {"code": {"type": "string", "pattern": "^(a+)+$"}}}
        await create(client, waits_for_code("redos", schema))
        task = await submit(client, "redos", {})
        await until_status(client, task.task_id, task_pb2.TASK_STATUS_WAITING)
        with pytest.raises(grpc.aio.AioRpcError) as rejected:
            await send(client, task.task_id, {"code": "a" * 40 + "!"})
        assert error_reason(rejected.value) == "PAYLOAD_REJECTED", rejected.value.details()
        assert "payload.code" in violations(rejected.value)
        with pytest.raises(grpc.aio.AioRpcError) as keys:  # a long property name: its path is cut short
            await send(client, task.task_id, {"code": 5, "b" * 50_000: 1})
        assert error_reason(keys.value) == "PAYLOAD_REJECTED", keys.value.details()
        assert (await send(client, task.task_id, {"code": "a" * 100_000})).step_path == "root/w"
        lookahead = {"type": "string", "pattern": "^(?=.*[0-9]).+$"}
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await create(client, waits_for_code("lookahead", lookahead))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "linear time" in violations(refused.value)["workflow.root.sequence.children[0].wait.schema"]


async def test_a_schema_whose_check_is_exponential_is_cut_short_off_the_event_loop():
    """Two `anyOf` branches that both recurse through `$ref` check a payload in time exponential in
    its depth: 18 levels took 69 s on the event loop, 30 (within the depth limit) centuries. A
    check stops after MAX_CHECK_STEPS keyword evaluations, in a worker thread: the signal is
    refused saying so, and the server answers other calls meanwhile."""
    branch = {"type": "object", "properties": {"a": {"$ref": "#"}}}
    schema = {"anyOf": [{**branch, "required": ["a"]}, {**branch, "required": ["b"]}]}
    deep: Any = 1
    for _ in range(30):
        deep = {"a": deep}
    async with replica_set(1, "sqlite://:memory:", [], "exponential") as (_, (client,)):
        await create(client, waits_for_code("exponential", schema))
        task = await submit(client, "exponential", {})
        await until_status(client, task.task_id, task_pb2.TASK_STATUS_WAITING)
        signal = asyncio.ensure_future(send(client, task.task_id, deep))
        await asyncio.sleep(0.1)  # the check has begun
        read = await client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=task.task_id), timeout=10)
        assert read.task.status == task_pb2.TASK_STATUS_WAITING and not signal.done()
        with pytest.raises(grpc.aio.AioRpcError) as rejected:
            await signal
        assert error_reason(rejected.value) == "PAYLOAD_REJECTED", rejected.value.details()
        assert "takes more than 100,000 steps" in violations(rejected.value)["payload"]
        assert (await send(client, task.task_id, {"a": {"a": {"b": 1}}})).step_path == "root/w"


async def test_a_workflow_stored_with_a_lookahead_pattern_before_it_was_refused_still_runs(server_factory):
    """Refusing patterns RE2 cannot run applies to new definitions: a workflow stored before (put
    into the store here, past the API) still loads, and its pattern is matched as it was."""
    running = await server_factory()
    client = client_for(running)
    schema = {"type": "object", "properties": {"code": {"type": "string", "pattern": "^(?=.*[0-9]).+$"}}}
    await running.orchestrator.store.workflows.create_workflow(waits_for_code("old-lookahead", schema))
    task = await submit(client, "old-lookahead", {})
    await until_status(client, task.task_id, task_pb2.TASK_STATUS_WAITING)
    with pytest.raises(grpc.aio.AioRpcError) as rejected:
        await send(client, task.task_id, {"code": "no digits"})
    assert error_reason(rejected.value) == "PAYLOAD_REJECTED"
    assert (await send(client, task.task_id, {"code": "r2d2"})).step_path == "root/w"
    await client.channel.close()
