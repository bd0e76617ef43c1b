"""The workflows port: immutable, numbered versions of workflow definitions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from mcp_sdk.proto import workflow_pb2
from mcp_sdk.workflow_tree import all_nodes


@dataclass(frozen=True)
class EventInterest:
    """What an event of one name may reach when it is published: the workflows whose triggers
    start a task on it (as `subscribers` gives them), and whether a task may wait for it: `lookback`
    is None when no version of any workflow ever waited for the name, else the longest `lookback`
    among those waits in seconds (0.0: none looks back); `cancels` whether some version's
    cancel_on names it. Versions record both as they are created, and the record is never lowered."""

    subscribers: list[tuple[str, int]]
    lookback: float | None
    cancels: bool = False  # some version's cancel_on names the event (its tasks may be called off)


def waited_events(workflow: workflow_pb2.Workflow) -> dict[str, float]:
    """The events `workflow`'s waits take (inline subworkflows' included), each with the longest
    lookback among its waits (seconds; 0.0: none looks back)."""
    found: dict[str, float] = {}
    for _, node in all_nodes(workflow.root):
        if node.WhichOneof("kind") == "wait" and node.wait.event:
            lookback = node.wait.lookback.ToNanoseconds() / 1e9 if node.wait.HasField("lookback") else 0.0
            found[node.wait.event] = max(found.get(node.wait.event, 0.0), lookback)
    return found


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

    async def event_interest(self, event: str) -> EventInterest:
        """What a publish of `event` may reach (see EventInterest), in one read. A version records
        the events its waits take as it is created, before any task can run it, and the record
        stays when versions are deleted (their tasks still wait), so a publish that finds no
        version waiting for its name may skip looking for waits."""
        ...

    async def delete_workflow(self, workflow_id: str) -> int:
        """Delete every version not deleted yet and return how many there were. They stay stored,
        marked deleted (see get_workflow), until `purge_deleted`; a later create of the id numbers
        on after them."""
        ...

    async def purge_deleted(self, at_most: int) -> list[str]:
        """Remove for good the deleted versions of the workflows last deleted longer ago than the
        store's retention (as finished tasks are) of which no task remains, of `at_most` such
        workflows at most; their ids. Their version numbers stay taken."""
        ...
