"""The workflows port: immutable, numbered versions of workflow definitions."""

from __future__ import annotations

from typing import Protocol

from mcp_sdk.proto import workflow_pb2


class WorkflowStore(Protocol):
    """Workflow versions. Creating an existing workflow_id adds the next version."""

    async def create_workflow(self, workflow: workflow_pb2.Workflow) -> workflow_pb2.Workflow:
        """Store `workflow` as the next version of its id (version and create_time set)."""
        ...

    async def get_workflow(self, workflow_id: str, version: int = 0) -> workflow_pb2.Workflow | None:
        """One version (0: the latest), or None."""
        ...

    async def latest_workflow_version(self, workflow_id: str) -> int:
        """The latest version of a workflow that exists (0 when none does)."""
        ...

    async def list_workflows(self, page_size: int, page_token: str) -> tuple[list[workflow_pb2.Workflow], str]:
        """The latest version of each workflow, by workflow_id, and the next page's token."""
        ...

    async def delete_workflow(self, workflow_id: str) -> int:
        """Delete every version; return how many there were."""
        ...
