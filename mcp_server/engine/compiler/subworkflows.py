"""Compiling subworkflow nodes: the stored definition the server set on the node at create time,
compiled in a scope of its own (its defaults, its node ids, its CEL variables) whose nodes count
toward the enclosing workflow's limits."""

from __future__ import annotations

from mcp_sdk.proto import workflow_pb2
from mcp_server.engine.compiler.fields import expression
from mcp_server.engine.compiler.scope import Scope, builds, compile_node
from mcp_server.engine.compiler.workflow_scope import declared_schema, defaults_filled, workflow_scope
from mcp_server.engine.plan import SubworkflowPlan


@builds("subworkflow")
def compile_subworkflow(
    node_id: str, sub: workflow_pb2.SubworkflowNode, path: str, scope: Scope, depth: int
) -> SubworkflowPlan | None:
    given = expression(sub.input, f"{path}.input", scope)
    definition = sub.definition
    if not sub.HasField("definition") or not definition.HasField("root"):
        # the server sets it on create (service/subworkflows.py); a stored version always has one
        scope.violations.add(f"{path}.workflow_id", f"workflow {sub.workflow_id!r} was not found to run here")
        return None
    if scope.node_count > scope.max_nodes:
        return None  # already too large (reported once, at the root): do not expand further
    inner = workflow_scope(
        definition,
        f"{path}.definition",
        scope.limits,
        scope.violations,
        scope.known_protocols,
        scope.server_step_timeout,
    )
    inner.max_depth = scope.max_depth  # depth and size are the enclosing workflow's, counted across
    inner.max_nodes = scope.max_nodes
    inner.node_count = scope.node_count
    root = compile_node(definition.root, f"{path}.definition.root", inner, depth + 1, default_id="root")
    input_schema = declared_schema(definition, "input_schema", f"{path}.definition", inner)
    output_schema = declared_schema(definition, "output_schema", f"{path}.definition", inner)
    scope.node_count = inner.node_count
    scope.depth = max(scope.depth, inner.depth)
    scope.protocols |= inner.protocols
    scope.uses += inner.uses
    scope.waits.update({f"{node_id}/{key}": wait for key, wait in inner.waits.items()})
    scope.suspends = scope.suspends or inner.suspends
    scope.cleans_up_on_cancel = scope.cleans_up_on_cancel or inner.cleans_up_on_cancel
    if root is None:
        return None
    fills = defaults_filled(definition, input_schema, f"{path}.definition", inner)
    return SubworkflowPlan(node_id, sub.workflow_id, sub.version, given, root, input_schema, output_schema, fills)
