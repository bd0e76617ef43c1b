"""Large JSON Schemas from outside, on real server processes: checking that a schema is one
takes about 0.4 ms of CPU per object or list in it (jsonschema's meta-schema check), so a 4 MB
schema held a server's event loop, and every task on it, for most of a minute, at create and
again on each replica's first task of that version. A schema has at most
MCP_LIMIT_MAX_SCHEMA_PARTS parts, and workflows compile off the event loop."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from mcp_sdk.proto import task_pb2, workflow_pb2
from tests.helpers import create, submit, violations, workflow
from tests.support.processes import replica_set

pytestmark = pytest.mark.asyncio


def wide(properties: int) -> dict[str, Any]:
    """An object schema of `properties` string properties: `properties` + 2 parts."""
    return {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(properties)}}


def waiting(workflow_id: str, **schemas: Any) -> workflow_pb2.Workflow:
    node: dict[str, Any] = {"id": "w", "wait": {"signal": "go", **schemas.pop("wait", {})}}
    return workflow(workflow_id, {"id": "root", "sequence": {"children": [node]}}, **schemas)


async def test_a_schema_with_more_parts_than_the_limit_is_refused_naming_it():
    async with replica_set(1, "sqlite://:memory:", [], "parts", MCP_LIMIT_MAX_SCHEMA_PARTS="100") as (_, (client,)):
        for definition, field in (
            (waiting("wide-input", input_schema=wide(99)), "workflow.input_schema"),
            (waiting("wide-output", output_schema=wide(99)), "workflow.output_schema"),
            (waiting("wide-wait", wait={"schema": wide(99)}), "workflow.root.sequence.children[0].wait.schema"),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await create(client, definition)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "MCP_LIMIT_MAX_SCHEMA_PARTS" in violations(refused.value)[field], refused.value.details()
        assert (await create(client, waiting("narrow", input_schema=wide(98)))).version == 1


async def test_a_large_schema_compiles_while_the_server_answers_other_calls(redis_url):
    """8,000 properties take seconds to check: CreateWorkflow on one replica, and the first task of
    that version on another (which compiles the version then), each while the same replica
    answers another call."""
    limit = {"MCP_LIMIT_MAX_SCHEMA_PARTS": "20000"}
    async with replica_set(2, redis_url, [], "large-schema", **limit) as (_, (first, second)):
        creating = asyncio.ensure_future(create(first, waiting("large", input_schema=wide(8000))))
        await asyncio.sleep(0.3)  # its compile has begun
        await asyncio.wait_for(first.workflows.ListWorkflows(workflow_pb2.ListWorkflowsRequest()), 5)
        assert not creating.done(), "the listing waited for the compile"
        assert (await creating).version == 1

        submitting = asyncio.ensure_future(submit(second, "large", {"p1": "x"}))
        await asyncio.sleep(0.3)
        await asyncio.wait_for(second.tasks.ListTasks(task_pb2.ListTasksRequest()), 5)
        assert not submitting.done(), "the listing waited for the compile"
        assert (await submitting).status == task_pb2.TASK_STATUS_PENDING
