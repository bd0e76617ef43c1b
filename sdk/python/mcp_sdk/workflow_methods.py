"""The client's workflow methods: create, validate, read, list and delete workflow versions, and
move subworkflow nodes onto the latest versions of the workflows they run.

A version pins the version of each workflow it runs as a subworkflow when it is created, so a fix
to a shared workflow reaches the workflows that run it only through new versions of those.
`upgrade_subworkflows` stores them: every workflow (or those named) whose subworkflow nodes run
an older version than the latest gets a new version running the latest, in the order that carries
a fix through every level (a workflow after the workflows it runs). It pages through
ListWorkflows and calls CreateWorkflow, as any client of the protos can."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mcp_sdk.connection import Connection
from mcp_sdk.definitions import workflow_from
from mcp_sdk.errors import McpError
from mcp_sdk.proto import workflow_pb2
from mcp_sdk.workflow_tree import all_nodes


@dataclass(frozen=True)
class SubworkflowMove:
    """One subworkflow node moved (or, in a dry run, to move) onto a newer version."""

    path: str  # the node's field path (`workflow.root.parallel.children[0]`)
    workflow_id: str
    from_version: int
    to_version: int


@dataclass(frozen=True)
class Upgrade:
    """A workflow whose subworkflow nodes ran older versions: the version stored to run the newer
    ones (`to_version`, 0 in a dry run or when the server refused it: then `error`)."""

    workflow_id: str
    from_version: int
    to_version: int
    moves: tuple[SubworkflowMove, ...]
    error: McpError | None = None


class WorkflowMethods(Connection):
    """Workflow versions: stored, checked, read, listed, deleted, and their subworkflows upgraded."""

    async def create_workflow(
        self, definition: workflow_pb2.Workflow | Mapping[str, Any] | str
    ) -> workflow_pb2.Workflow:
        """Store a workflow (a new version when its id exists); returns it with its version."""
        request = workflow_pb2.CreateWorkflowRequest(workflow=workflow_from(definition))
        reply: workflow_pb2.CreateWorkflowResponse = await self._call(self.workflows.CreateWorkflow, request)
        return reply.workflow

    async def validate_workflow(
        self, definition: workflow_pb2.Workflow | Mapping[str, Any] | str
    ) -> workflow_pb2.ValidateWorkflowResponse:
        """Check a definition without storing it; an invalid one raises McpError with the violations."""
        reply: workflow_pb2.ValidateWorkflowResponse = await self._call(
            self.workflows.ValidateWorkflow, workflow_pb2.ValidateWorkflowRequest(workflow=workflow_from(definition))
        )
        return reply

    async def get_workflow(self, workflow_id: str, version: int = 0) -> workflow_pb2.Workflow:
        """A workflow's definition (version 0: the latest)."""
        request = workflow_pb2.GetWorkflowRequest(workflow_id=workflow_id, version=version)
        reply: workflow_pb2.GetWorkflowResponse = await self._call(self.workflows.GetWorkflow, request)
        return reply.workflow

    async def list_workflows(self) -> list[workflow_pb2.Workflow]:
        """Every workflow's latest version, across all pages."""
        return [
            w
            async for reply in self._pages(
                self.workflows.ListWorkflows, workflow_pb2.ListWorkflowsRequest(page_size=1000)
            )
            for w in reply.workflows
        ]

    async def delete_workflow(self, workflow_id: str) -> workflow_pb2.DeleteWorkflowResponse:
        """Delete every version of a workflow: nothing new starts from it, its tasks run to their
        end (docs/workflows.md, "Deleting a workflow")."""
        reply: workflow_pb2.DeleteWorkflowResponse = await self._call(
            self.workflows.DeleteWorkflow, workflow_pb2.DeleteWorkflowRequest(workflow_id=workflow_id)
        )
        return reply

    async def upgrade_subworkflows(
        self, workflow_ids: Sequence[str] = (), *, runs: Sequence[str] = (), dry_run: bool = False
    ) -> list[Upgrade]:
        """Store a new version of each workflow whose latest version runs an older version of a
        workflow than its latest, running the latest instead; one Upgrade per workflow that had
        any. `workflow_ids`: only these (default: every workflow); `runs`: move only the nodes
        that run these workflows, or a workflow upgraded by this call (so a fix to one carries
        through every level that runs it). Each workflow is upgraded at most once, after the
        workflows it runs; a node that runs its own workflow's older version is left alone. A
        refusal (a workflow it runs deleted since, a protocol no longer registered) is reported
        in its Upgrade and the rest go on; `dry_run` stores nothing and says what would move."""
        if workflow_ids:  # these and the latest versions of what they run; not every workflow
            stored = {w: await self.get_workflow(w) for w in dict.fromkeys(workflow_ids)}  # NOT_FOUND names it
            latest = {workflow_id: w.version for workflow_id, w in stored.items()}
            for child in sorted({c for w in stored.values() for c in _runs(w)} - set(stored)):
                try:
                    latest[child] = (await self.get_workflow(child)).version
                except McpError as gone:
                    if gone.reason != "WORKFLOW_NOT_FOUND":
                        raise
        else:
            stored = {w.workflow_id: w for w in await self.list_workflows()}
            latest = {workflow_id: w.version for workflow_id, w in stored.items()}
        wanted = set(runs)
        upgrades = []
        for workflow_id in upgrade_order(stored, set(workflow_ids) or set(stored)):
            current = stored[workflow_id]
            moves = outdated_nodes(current, latest, wanted)
            if not moves:
                continue
            upgrade = Upgrade(workflow_id, current.version, 0, moves)
            if dry_run:
                latest[workflow_id] += 1  # what the workflows that run it would then see
            else:
                try:
                    created = await self.create_workflow(moved(current, moves))
                except McpError as refused:
                    upgrades.append(Upgrade(workflow_id, current.version, 0, moves, refused))
                    continue
                latest[workflow_id] = created.version
                upgrade = Upgrade(workflow_id, current.version, created.version, moves)
            if wanted:
                wanted.add(workflow_id)
            upgrades.append(upgrade)
        return upgrades


def own_subworkflows(workflow: workflow_pb2.Workflow) -> list[tuple[str, workflow_pb2.Node]]:
    """The subworkflow nodes of `workflow`'s own tree (not those inside what they run)."""
    if not workflow.HasField("root"):
        return []
    nodes = all_nodes(workflow.root, into_subworkflows=False)
    return [(path, node) for path, node in nodes if node.WhichOneof("kind") == "subworkflow"]


def outdated_nodes(
    workflow: workflow_pb2.Workflow, latest: Mapping[str, int], wanted: set[str]
) -> tuple[SubworkflowMove, ...]:
    """The subworkflow nodes of `workflow` that run an older version than `latest` has (only of
    the workflows in `wanted`, when there are any), never one running `workflow` itself."""
    moves = []
    for path, node in own_subworkflows(workflow):
        runs, pinned = node.subworkflow.workflow_id, node.subworkflow.version
        if runs == workflow.workflow_id or (wanted and runs not in wanted):
            continue
        if latest.get(runs, 0) > pinned:
            moves.append(SubworkflowMove(path, runs, pinned, latest[runs]))
    return tuple(moves)


def upgrade_order(stored: Mapping[str, workflow_pb2.Workflow], chosen: set[str]) -> list[str]:
    """`chosen`, each after the workflows it runs (depth first; a cycle is cut where it closes)."""
    order: list[str] = []
    seen: set[str] = set()

    def visit(workflow_id: str) -> None:
        stack = [(workflow_id, iter(_runs(stored[workflow_id])))]
        seen.add(workflow_id)
        while stack:
            current, below = stack[-1]
            step = next((w for w in below if w in stored and w not in seen), None)
            if step is None:
                stack.pop()
                if current in chosen:
                    order.append(current)
            else:
                seen.add(step)
                stack.append((step, iter(_runs(stored[step]))))

    for workflow_id in sorted(chosen):
        if workflow_id not in seen:
            visit(workflow_id)
    return order


def _runs(workflow: workflow_pb2.Workflow) -> list[str]:
    return sorted({node.subworkflow.workflow_id for _, node in own_subworkflows(workflow)})


def moved(workflow: workflow_pb2.Workflow, moves: Sequence[SubworkflowMove]) -> workflow_pb2.Workflow:
    """A copy of `workflow` to create again, its moved nodes naming their new versions (the
    server pins every node again, the others at the versions they had)."""
    copy = workflow_pb2.Workflow()
    copy.CopyFrom(workflow)
    copy.ClearField("version")
    copy.ClearField("create_time")
    to = {move.path: move.to_version for move in moves}
    for path, node in own_subworkflows(copy):
        node.subworkflow.ClearField("definition")
        if path in to:
            node.subworkflow.version = to[path]
    return copy
