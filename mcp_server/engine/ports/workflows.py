"""The workflows port: immutable, numbered versions of workflow definitions."""

from __future__ import annotations

from typing import Protocol

from mcp_sdk.proto import workflow_pb2


class WorkflowStore(Protocol):
    """Workflow versions. Creating an existing workflow_id adds the next version (after every
    version it ever had, deleted ones included: a version number names one definition for good)."""

    async def create_workflow(self, workflow: workflow_pb2.Workflow) -> workflow_pb2.Workflow:
        """Store `workflow` as the next version of its id (version and create_time set)."""
        ...

    async def get_workflow(
        self, workflow_id: str, version: int = 0, deleted_too: bool = False
    ) -> workflow_pb2.Workflow | None:
        """One version (0: the latest not deleted), or None. A deleted version (delete_time set)
        only with `deleted_too`: the tasks that ran it still run, and are read back, with it."""
        ...

    async def live_version(self, workflow_id: str, version: int = 0) -> int:
        """`version` when it exists and is not deleted, else 0; with 0, the latest such version
        (0 when none is). What a submission may run."""
        ...

    async def list_workflows(self, page_size: int, page_token: str) -> tuple[list[workflow_pb2.Workflow], str]:
        """The latest version of each workflow not deleted, by workflow_id, and the next page's token."""
        ...

    async def subscribers(self, event: str) -> list[tuple[str, int]]:
        """(workflow_id, version) of every workflow whose latest version not deleted has a trigger
        on `event`, by workflow_id."""
        ...

    async def delete_workflow(self, workflow_id: str) -> int:
        """Delete every version not deleted yet and return how many there were. They stay stored,
        marked deleted (see get_workflow); a later create of the id numbers on after them."""
        ...
