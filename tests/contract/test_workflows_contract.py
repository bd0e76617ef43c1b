"""The WorkflowStore contract: every backend (SQLite, one Redis node, a Redis Cluster) behaves the same."""

from __future__ import annotations

import pytest

from mcp_sdk.proto import workflow_pb2

pytestmark = pytest.mark.asyncio


async def test_workflow_versions_are_numbered_and_immutable(store):
    first = await store.workflows.create_workflow(workflow_pb2.Workflow(workflow_id="w", description="1"))
    second = await store.workflows.create_workflow(workflow_pb2.Workflow(workflow_id="w", description="2"))
    assert (first.version, second.version) == (1, 2)
    assert (await store.workflows.get_workflow("w")).description == "2"
    assert (await store.workflows.get_workflow("w", 1)).description == "1"
    assert await store.workflows.get_workflow("w", 3) is None
    assert await store.workflows.delete_workflow("w") == 2
    assert await store.workflows.get_workflow("w") is None
