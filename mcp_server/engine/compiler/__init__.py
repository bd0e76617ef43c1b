"""Compile a Workflow message into a Plan, reporting every problem as a field violation.

Validation and compilation are one pass: a workflow that compiles is valid, and every
violation names the field (for example `workflow.root.sequence.children[1].step.protocol`).
`scope.py` carries the pass down the tree and dispatches on each node's kind; a module per
family of kinds compiles them (`steps.py`, `composites.py`), `fields.py` the fields they share.
"""

from __future__ import annotations

from collections.abc import Iterable

from mcp_sdk.proto import workflow_pb2
from mcp_server.engine.compiler import agents, composites, steps, subworkflows, triggers, waits
from mcp_server.engine.compiler.concurrency import compile_concurrency
from mcp_server.engine.compiler.durations import duration
from mcp_server.engine.compiler.scope import WORKFLOW_ID, compile_node
from mcp_server.engine.compiler.triggers import compile_cancel_on, compile_triggers
from mcp_server.engine.compiler.workflow_scope import declared_schema, defaults_filled, workflow_scope
from mcp_server.engine.plan import Plan, PlanNode
from mcp_server.errors import ViolationCollector
from mcp_server.settings import Limits

NODE_KINDS = (agents, composites, steps, subworkflows, triggers, waits)  # imported so that each registers its builders


def compile_workflow(
    workflow: workflow_pb2.Workflow,
    limits: Limits,
    *,
    known_protocols: Iterable[str] | None = None,
    default_step_timeout: float | None = None,
    default_task_timeout: float | None = None,
) -> Plan:
    """Validate and compile `workflow`.

    `known_protocols`, when given, is the set of protocol names a step may call; unknown
    names are violations. Raises InvalidArgument listing every violation found.
    """
    violations = ViolationCollector()
    if not WORKFLOW_ID.match(workflow.workflow_id):
        violations.add(
            "workflow.workflow_id", "must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    scope = workflow_scope(workflow, "workflow", limits, violations, known_protocols, default_step_timeout)
    task_timeout = (
        duration(workflow.defaults, "task_timeout", "workflow.defaults.task_timeout", violations)
        or default_task_timeout
    )
    queue_timeout = duration(workflow.defaults, "queue_timeout", "workflow.defaults.queue_timeout", violations)
    root: PlanNode | None = None
    if not workflow.HasField("root"):
        violations.add("workflow.root", "a workflow needs a root node")
    else:
        root = compile_node(workflow.root, "workflow.root", scope, depth=1, default_id="root")
    concurrency = compile_concurrency(workflow, limits, violations)
    event_triggers = compile_triggers(workflow, limits, violations)
    cancel_on = compile_cancel_on(workflow, limits, violations)
    input_schema = declared_schema(workflow, "input_schema", "workflow", scope)
    output_schema = declared_schema(workflow, "output_schema", "workflow", scope)
    fill_input_defaults = defaults_filled(workflow, input_schema, "workflow", scope)
    if scope.node_count > scope.max_nodes:
        violations.add("workflow.root", f"has {scope.node_count} nodes; the limit is {scope.max_nodes}")
    violations.raise_if_any(f"workflow {workflow.workflow_id!r} is invalid")
    assert root is not None
    return Plan(
        workflow_id=workflow.workflow_id,
        version=workflow.version,
        root=root,
        task_timeout=task_timeout,
        queue_timeout=queue_timeout,
        fill_input_defaults=fill_input_defaults,
        node_count=scope.node_count,
        depth=scope.depth,
        protocols=frozenset(scope.protocols),
        protocol_uses=tuple(scope.uses),
        waits=dict(scope.waits),
        suspends=scope.suspends,
        cleans_up_on_cancel=scope.cleans_up_on_cancel,
        concurrency=concurrency,
        input_schema=input_schema,
        output_schema=output_schema,
        triggers=event_triggers,
        cancel_on=cancel_on,
    )
