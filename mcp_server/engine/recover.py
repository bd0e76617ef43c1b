"""Recover nodes: run the body; when it fails with a code the node recovers, run the handler on
the same input instead, its CEL seeing `error`, and output what it gives (or, with `rethrow`,
fail with the body's error once the handler is done: a cleanup that does not stand in).

Only a failure is recovered: a cancel (the task's, or a branch no longer needed) and a timeout
running out around the node pass through, as everywhere. A run resumed after the body failed
(a crash during the handler, a wait in it that parked the task) goes on with the handler: the
body, whose failure is in the task's record, is not run again."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mcp_server.engine.context import NodeFailed, NodeResult, RunContext
from mcp_server.engine.executor import child_path, execute, runs
from mcp_server.engine.payload import Payload
from mcp_server.engine.plan import RecoverPlan

ERROR = "error"  # the handler's CEL variable: how the body failed


@runs("recover")
async def run_recover(
    node: RecoverPlan, path: str, value: Payload, ctx: RunContext, scope: Mapping[str, Any]
) -> NodeResult:
    body_path = child_path(path, node.body.id)
    failure = ctx.failed_before(body_path)
    if failure is None:
        try:
            return await execute(node.body, body_path, value, ctx, scope)
        except NodeFailed as failed:
            failure = failed
    if node.codes and failure.code not in node.codes:
        raise failure
    error = {"code": failure.code, "message": failure.message, "step_path": ctx.first_failed_step(body_path)}
    handled = await execute(node.handler, child_path(path, node.handler.id), value, ctx, {**scope, ERROR: error})
    if node.rethrow:
        raise failure
    return handled
