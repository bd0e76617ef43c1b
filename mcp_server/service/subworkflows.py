"""Pinning a new workflow version's subworkflows: each subworkflow node gets the stored version it
names (the latest for version 0), definition and all, before the version is compiled and stored.
A version thus never changes, whatever later becomes of the workflows it runs."""

from __future__ import annotations

from itertools import islice

from mcp_sdk.proto import workflow_pb2
from mcp_sdk.workflow_tree import all_nodes
from mcp_server.engine.compiler.scope import WORKFLOW_ID
from mcp_server.engine.ports import WorkflowStore
from mcp_server.errors import FieldViolation, InvalidArgument, ViolationCollector
from mcp_server.settings import Limits


async def pin_subworkflows(workflow: workflow_pb2.Workflow, store: WorkflowStore, limits: Limits) -> None:
    """Set each subworkflow node's `version` and `definition` from the store (what a client sent
    in `definition` is replaced); raise InvalidArgument naming each one that names no stored
    version. Looks at most at the node limit's worth of nodes: more fail to compile anyway."""
    if not workflow.HasField("root"):
        return
    violations = ViolationCollector()
    stored: dict[tuple[str, int], workflow_pb2.Workflow | None] = {}
    pinned = 0  # bytes of the definitions copied in
    nodes = all_nodes(workflow.root, into_subworkflows=False)
    for path, node in islice(nodes, limits.max_workflow_nodes + 1):
        if node.WhichOneof("kind") != "subworkflow":
            continue
        sub = node.subworkflow
        sub.ClearField("definition")
        if not WORKFLOW_ID.match(sub.workflow_id):
            violations.add(
                f"{path}.subworkflow.workflow_id",
                "must name a stored workflow: 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit",
            )
            continue
        if sub.version < 0:
            violations.add(f"{path}.subworkflow.version", "must be 0 (the latest) or a version number")
            continue
        key = (sub.workflow_id, sub.version)
        if key not in stored:
            stored[key] = await store.get_workflow(*key, deleted_too=True)
        found = stored[key]
        if found is None or found.HasField("delete_time"):
            which = f"has no version {sub.version}" if sub.version else "is not stored"
            if found is not None:
                which = f"version {sub.version} was deleted"  # its tasks run on; nothing new refers to it
            violations.add(f"{path}.subworkflow.workflow_id", f"workflow {sub.workflow_id!r} {which}")
            continue
        pinned += found.ByteSize()
        if pinned > limits.max_message_bytes:  # before copying more: a thousand copies of a large one
            raise InvalidArgument(
                f"the workflows it runs are {pinned} bytes or more, stored with it; at most"
                f" {limits.max_message_bytes} are allowed (MCP_LIMIT_MAX_MESSAGE_BYTES)",
                violations=[FieldViolation(f"{path}.subworkflow", "the subworkflows stored so far exceed the limit")],
                reason="WORKFLOW_TOO_LARGE",
            )
        sub.version = found.version
        sub.definition.CopyFrom(found)
    violations.raise_if_any(f"workflow {workflow.workflow_id!r} runs a workflow that is not stored")
