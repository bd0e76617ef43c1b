"""Compile a Workflow message into a Plan, reporting every problem as a field violation.

Validation and compilation are one pass: a workflow that compiles is valid, and every
violation names the field (for example `workflow.root.sequence.children[1].step.protocol`).
`scope.py` carries the pass down the tree and dispatches on each node's kind; a module per
family of kinds compiles them (`steps.py`, `composites.py`), `fields.py` the fields they share.
"""

from __future__ import annotations

from collections.abc import Iterable

from mcp_sdk.proto import workflow_pb2
from mcp_server.engine.compiler import composites, steps, waits
from mcp_server.engine.compiler.concurrency import compile_concurrency
from mcp_server.engine.compiler.fields import bounded, duration, retry_policy
from mcp_server.engine.compiler.scope import WORKFLOW_ID, Scope, compile_node
from mcp_server.engine.plan import Plan, PlanNode, RetryPolicy
from mcp_server.errors import ViolationCollector
from mcp_server.settings import Limits

NODE_KINDS = (composites, steps, waits)  # imported so that each registers its builders


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
    wf_limits = workflow.limits
    scope = Scope(
        violations=violations,
        limits=limits,
        known_protocols=frozenset(known_protocols) if known_protocols is not None else None,
        default_retry=retry_policy(workflow.defaults.retry, RetryPolicy(), "workflow.defaults.retry", violations)
        if workflow.defaults.HasField("retry")
        else RetryPolicy(),
        default_step_timeout=duration(workflow.defaults, "step_timeout", "workflow.defaults.step_timeout", violations)
        or default_step_timeout,
        default_attempt_timeout=duration(
            workflow.defaults, "attempt_timeout", "workflow.defaults.attempt_timeout", violations
        ),
        max_depth=bounded(wf_limits.max_depth, limits.max_workflow_depth, "workflow.limits.max_depth", violations),
        max_nodes=bounded(wf_limits.max_nodes, limits.max_workflow_nodes, "workflow.limits.max_nodes", violations),
        max_rounds=bounded(wf_limits.max_rounds, limits.max_rounds, "workflow.limits.max_rounds", violations),
        max_transitions=bounded(
            wf_limits.max_transitions, limits.max_transitions, "workflow.limits.max_transitions", violations
        ),
        max_map_items=bounded(
            wf_limits.max_map_items, limits.max_map_items, "workflow.limits.max_map_items", violations
        ),
        max_concurrency=bounded(
            wf_limits.max_concurrency, limits.max_concurrency, "workflow.limits.max_concurrency", violations
        ),
    )
    task_timeout = (
        duration(workflow.defaults, "task_timeout", "workflow.defaults.task_timeout", violations)
        or default_task_timeout
    )
    root: PlanNode | None = None
    if not workflow.HasField("root"):
        violations.add("workflow.root", "a workflow needs a root node")
    else:
        root = compile_node(workflow.root, "workflow.root", scope, depth=1, default_id="root")
    concurrency = compile_concurrency(workflow, limits, violations)
    if scope.node_count > scope.max_nodes:
        violations.add("workflow.root", f"has {scope.node_count} nodes; the limit is {scope.max_nodes}")
    violations.raise_if_any(f"workflow {workflow.workflow_id!r} is invalid")
    assert root is not None
    return Plan(
        workflow_id=workflow.workflow_id,
        version=workflow.version,
        root=root,
        task_timeout=task_timeout,
        node_count=scope.node_count,
        depth=scope.depth,
        protocols=frozenset(scope.protocols),
        protocol_uses=tuple(scope.uses),
        waits=dict(scope.waits),
        suspends=scope.suspends,
        concurrency=concurrency,
    )
