"""The scope a workflow's tree compiles in: its defaults and limits, bounded by the server's.
A workflow run on its own compiles in one; each subworkflow in one of its own."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from mcp_sdk.proto import workflow_pb2
from mcp_server.engine.compiler.durations import duration
from mcp_server.engine.compiler.fields import bounded, retry_policy
from mcp_server.engine.compiler.scope import Scope
from mcp_server.engine.plan import RetryPolicy
from mcp_server.engine.schemas import PayloadSchema, SchemaInvalid, compile_schema
from mcp_server.engine.values import struct_to_dict
from mcp_server.errors import ViolationCollector
from mcp_server.settings import Limits


def workflow_scope(
    workflow: workflow_pb2.Workflow,
    path: str,
    limits: Limits,
    violations: ViolationCollector,
    known_protocols: Iterable[str] | None,
    default_step_timeout: float | None,
) -> Scope:
    """A fresh scope for `workflow`'s tree, its fields reported under `path` (`workflow`)."""
    wf_limits, defaults = workflow.limits, workflow.defaults
    return Scope(
        violations=violations,
        limits=limits,
        known_protocols=frozenset(known_protocols) if known_protocols is not None else None,
        default_retry=retry_policy(defaults.retry, RetryPolicy(), f"{path}.defaults.retry", violations)
        if defaults.HasField("retry")
        else RetryPolicy(),
        default_step_timeout=duration(defaults, "step_timeout", f"{path}.defaults.step_timeout", violations)
        or default_step_timeout,
        default_attempt_timeout=duration(defaults, "attempt_timeout", f"{path}.defaults.attempt_timeout", violations),
        server_step_timeout=default_step_timeout,
        max_depth=bounded(wf_limits.max_depth, limits.max_workflow_depth, f"{path}.limits.max_depth", violations),
        max_nodes=bounded(wf_limits.max_nodes, limits.max_workflow_nodes, f"{path}.limits.max_nodes", violations),
        max_rounds=bounded(wf_limits.max_rounds, limits.max_rounds, f"{path}.limits.max_rounds", violations),
        max_transitions=bounded(
            wf_limits.max_transitions, limits.max_transitions, f"{path}.limits.max_transitions", violations
        ),
        max_map_items=bounded(
            wf_limits.max_map_items, limits.max_map_items, f"{path}.limits.max_map_items", violations
        ),
        max_concurrency=bounded(
            wf_limits.max_concurrency, limits.max_concurrency, f"{path}.limits.max_concurrency", violations
        ),
    )


def declared_schema(workflow: workflow_pb2.Workflow, field: str, path: str, scope: Scope) -> PayloadSchema | None:
    """`workflow.<field>` (input_schema, output_schema) compiled (None: unset), a schema that is
    not one reported at `path.<field>` (see schema_checks)."""
    if not workflow.HasField(field):
        return None
    try:
        return compile_schema(struct_to_dict(getattr(workflow, field)), **schema_checks(scope))
    except SchemaInvalid as exc:
        scope.violations.add(f"{path}.{field}", str(exc))
        return None


def defaults_filled(
    workflow: workflow_pb2.Workflow, input_schema: PayloadSchema | None, path: str, scope: Scope
) -> bool:
    """`workflow.fill_input_defaults`, which needs an input_schema to take the defaults from."""
    if workflow.fill_input_defaults and input_schema is None and not workflow.HasField("input_schema"):
        scope.violations.add(f"{path}.fill_input_defaults", "needs an input_schema to take the defaults from")
    return workflow.fill_input_defaults and input_schema is not None


def schema_checks(scope: Scope) -> dict[str, Any]:
    """How compile_schema checks a schema of this workflow: a new definition (CreateWorkflow,
    ValidateWorkflow, which know the registered protocols) is held to every check; a stored one
    being loaded keeps what it was given."""
    new = scope.known_protocols is not None
    return {"linear_only": new, "max_parts": scope.limits.max_schema_parts if new else None}
