"""Subworkflow nodes: another workflow's root, run here on this node's input (or on what its
`input` gives), with CEL variables of its own: `input` is what it was given, `steps` its own
nodes' outputs, as when that workflow runs as a task of its own."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mcp_server.engine.context import NodeFailed, NodeResult, RunContext
from mcp_server.engine.executor import STEPS, child_path, evaluate, execute, runs
from mcp_server.engine.payload import Payload
from mcp_server.engine.plan import SubworkflowPlan
from mcp_server.engine.schema_defaults import with_defaults
from mcp_server.engine.schemas import rejection
from mcp_server.engine.values import as_object


@runs("subworkflow")
async def run_subworkflow(
    node: SubworkflowPlan, path: str, value: Payload, ctx: RunContext, scope: Mapping[str, Any]
) -> NodeResult:
    # an object, as a task's input is (anything else is wrapped as {"value": ...})
    if node.input is None:
        given = value.as_object()
    else:
        given = Payload.of_python(as_object(evaluate(node.input, ctx, value, scope, node.id, "input")))
    if node.input_schema and node.fill_input_defaults:
        filled = with_defaults(node.input_schema.source, given.python())
        given = given if filled is given.python() else Payload.of_python(filled)
    if node.input_schema and (rejected := await rejection(node.input_schema, given.python(), "input")):
        raise NodeFailed("INVALID_ARGUMENT", f"node {node.id}: its input does not fit {_schema_of(node)}: {rejected}")
    own: dict[str, Any] = {"input": given, STEPS: dict(ctx.restored_outputs.get(path, {}))}
    result = await execute(node.root, child_path(path, node.root.id), given, ctx, own)
    if node.output_schema and (rejected := await rejection(node.output_schema, result.output.python(), "result")):
        raise NodeFailed("INVALID_ARGUMENT", f"node {node.id}: its result does not fit {_schema_of(node)}: {rejected}")
    return NodeResult(result.output)


def _schema_of(node: SubworkflowPlan) -> str:
    return f"the schema of workflow {node.workflow_id!r} version {node.version}"
