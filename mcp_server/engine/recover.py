"""Recover nodes: run the body; when it fails with a code the node recovers, run the handler on
the same input instead, its CEL seeing `error`, and output what it gives (or, with `rethrow`,
fail with the body's error once the handler is done: a cleanup that does not stand in).

Only a failure is recovered: a cancel (the task's, or a branch no longer needed) and a timeout
running out around the node pass through, as everywhere. With `on_cancel` the handler is also the
clean-up of a cancelled task (cancel_cleanup.py): walked to after the cancel, a node whose body
(or handler) had begun runs its handler then. A run resumed after the body failed (a crash during
the handler, a wait in it that parked the task) goes on with the handler: the body, whose failure
is in the task's record, is not run again."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import suppress
from typing import Any, NoReturn

from mcp_sdk.proto import task_pb2
from mcp_server.engine.cancel_cleanup import say_cleaning_up
from mcp_server.engine.cleanup_replay import CleanUp, replaying, walking
from mcp_server.engine.context import NodeFailed, NodeResult, RunContext
from mcp_server.engine.executor import child_path, execute, runs
from mcp_server.engine.payload import Payload
from mcp_server.engine.plan import RecoverPlan

ERROR = "error"  # the handler's CEL variable: how the body failed


@runs("recover")
async def run_recover(
    node: RecoverPlan, path: str, value: Payload, ctx: RunContext, scope: Mapping[str, Any]
) -> NodeResult:
    if (walk := replaying()) is not None:
        await _clean_up(node, path, value, ctx, scope, walk)
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


async def _clean_up(
    node: RecoverPlan, path: str, value: Payload, ctx: RunContext, scope: Mapping[str, Any], walk: CleanUp
) -> NoReturn:
    """The node as a cancel's clean-up walks it: the body's own clean-ups first (inner before
    outer); then, with on_cancel, the handler, live (gone on with, if it had begun), its `error`
    the cancel (or the body's failure it was handling); then the node fails CANCELLED."""
    body_path, handler_path = child_path(path, node.body.id), child_path(path, node.handler.id)
    failure = ctx.failed_before(body_path)
    if failure is None:
        with suppress(NodeFailed):  # the walk of what began fails CANCELLED
            await execute(node.body, body_path, value, ctx, scope)
        error = {
            "code": "CANCELLED",
            "message": walk.reason,
            "step_path": ctx.first_failed_step(body_path, task_pb2.STEP_STATUS_CANCELLED),
        }
    else:
        error = {"code": failure.code, "message": failure.message, "step_path": ctx.first_failed_step(body_path)}
    handles = failure is None or not node.codes or failure.code in node.codes
    if node.on_cancel and handles and ctx.began(body_path):
        with walking(None):
            say_cleaning_up(ctx, walk)
            try:
                await execute(node.handler, handler_path, value, ctx, {**scope, ERROR: error})
            except NodeFailed as failed:
                walk.failed.append(f"{handler_path}: {failed.message}")
    elif ctx.began(handler_path):
        with suppress(NodeFailed):
            await execute(node.handler, handler_path, value, ctx, {**scope, ERROR: error})
    raise NodeFailed("CANCELLED", f"recover {node.id}: the task was cancelled")
