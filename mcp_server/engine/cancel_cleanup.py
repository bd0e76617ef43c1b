"""A cancelled task's clean-up (RecoverNode.on_cancel): the run walks its plan again over what it
recorded (see cleanup_replay.py), and every recover node with on_cancel that the cancel stopped
runs its handler; then the task ends CANCELLED.

The walk is bounded by MCP_LIMIT_CANCEL_CLEANUP_SECONDS from the cancel (across the run's lives:
the time is kept in Task.cancel_request). The task says it cleans up (Task.cancel_request, a
CLEANING_UP event) in the write that carries the first handler's start, so a run that crashes
meanwhile is taken over to finish the clean-up, never its body. Nothing parks: a handler's wait for
rate-limit units waits in memory, and the compiler refuses a wait or a sleep in such a handler.
"""

from __future__ import annotations

import asyncio
import logging
import time

from mcp_server.engine.cleanup_replay import CleanUp, walking
from mcp_server.engine.context import NodeFailed, RunContext
from mcp_server.engine.event_types import E
from mcp_server.engine.executor import execute
from mcp_server.engine.plan import Plan
from mcp_server.errors import LeaseLost, Unavailable

log = logging.getLogger(__name__)


async def clean_up(ctx: RunContext, plan: Plan, reason: str, limit: float) -> tuple[str, str]:
    """Run the handlers the cancel asks for, at most `limit` seconds after the clean-up first
    began; return the message the task ends CANCELLED with, and how the clean-up went: `done`,
    `failed`, `cut_short`, or empty when no handler ran."""
    request = ctx.task.cancel_request if ctx.task.HasField("cancel_request") else None
    walk = CleanUp(request.reason if request else reason, request.time.ToNanoseconds() if request else time.time_ns())
    ctx.suspensions.request_park = None  # a cancelled task does not park
    loop = asyncio.get_running_loop()
    try:
        with walking(walk):
            async with asyncio.timeout_at(loop.time() + walk.since_ns / 1e9 + limit - time.time()):
                await execute(plan.root, plan.root.id, ctx.task_input, ctx, {})
    except NodeFailed:
        pass  # the walk ends so: the nodes the cancel stopped fail CANCELLED, once cleaned up
    except TimeoutError:
        ctx.abandon_unfinished("CANCELLED", f"the clean-up ran out of its {limit:g}s (cancel_cleanup_seconds)")
        return f"{walk.reason}; its clean-up was cut short after {limit:g}s", "cut_short"
    except (LeaseLost, Unavailable):
        raise  # another replica took the task over, or the store is away: it is finished from the last write
    except Exception as exc:  # a bug must not leave the task RUNNING: it ends CANCELLED all the same
        log.exception("task %s: its clean-up failed unexpectedly", ctx.task.task_id)
        ctx.abandon_unfinished("CANCELLED", f"internal error in the clean-up: {type(exc).__name__}")
        return f"{walk.reason}; its clean-up failed: internal error: {type(exc).__name__}: {exc}", "failed"
    if walk.failed:
        return f"{walk.reason}; its clean-up failed: {walk.failed[0]}", "failed"
    return walk.reason, "done" if ctx.task.HasField("cancel_request") else ""


def say_cleaning_up(ctx: RunContext, walk: CleanUp) -> None:
    """Mark the task as cleaning up, once: written with the first handler's start."""
    if ctx.task.HasField("cancel_request"):
        return
    ctx.task.cancel_request.reason = walk.reason
    ctx.task.cancel_request.time.FromNanoseconds(walk.since_ns)
    ctx.emit(
        E.TASK_EVENT_TYPE_CLEANING_UP,
        flush_soon=True,
        message=f"cancelled ({walk.reason}): running the clean-up of its recover nodes first",
        data={"reason": walk.reason},
    )
