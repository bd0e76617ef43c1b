"""Run any plan node: skip it if an earlier life of the run finished it, else record its
start, dispatch on its kind, and record how it ended.

Each node kind's module registers its runner here (`@runs("sequence")`); the modules sit above
this one and import it, never the other way round. runner.py, above them all, imports them so
that every kind is registered before a task runs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from mcp_server.engine.cancelling import raise_if_cancelled
from mcp_server.engine.cel import Expression, ExpressionError
from mcp_server.engine.cleanup_replay import replaying
from mcp_server.engine.context import NodeFailed, NodeResult, RunContext
from mcp_server.engine.logcontext import step_path_var
from mcp_server.engine.payload import Payload
from mcp_server.engine.plan import LEAF_KINDS, PlanNode
from mcp_server.engine.values import ValueTooDeep
from mcp_server.settings import Limits

STEPS = "steps"  # the CEL variable of the completed nodes' outputs by id

NodeRunner = Callable[[Any, str, Payload, RunContext, Mapping[str, Any]], Awaitable[NodeResult]]
_RUNNERS: dict[str, NodeRunner] = {}


def runs(kind: str) -> Callable[[NodeRunner], NodeRunner]:
    """Register the coroutine that runs nodes of `kind`."""

    def register(runner: NodeRunner) -> NodeRunner:
        _RUNNERS[kind] = runner
        return runner

    return register


async def execute(node: PlanNode, path: str, value: Payload, ctx: RunContext, scope: Mapping[str, Any]) -> NodeResult:
    """Run `node` at `path` with input `value`; raise NodeFailed if it fails."""
    outputs = scope.get(STEPS, ctx.outputs_by_id)  # a subworkflow's nodes have a `steps` of their own
    done = ctx.finished(path)
    if done is not None:
        outputs[node.id] = done.output
        return done
    step_path_var.set(path)
    given = given_input(ctx, path)
    if given is not None:
        value = given

    def body() -> Awaitable[NodeResult]:
        return _RUNNERS[node.kind](node, path, value, ctx, scope)

    # a leaf keeps its own timeout; a clean-up's walk has its own bound (cleanup_replay.py)
    timeout = getattr(node, "timeout", None) if node.kind not in LEAF_KINDS and replaying() is None else None
    run = body if timeout is None else lambda: _within(timeout, node, path, ctx, body)
    result = await run_recorded(ctx, path, node.id, node.kind, getattr(node, "protocol", ""), run)
    outputs[node.id] = result.output
    return result


async def _within(
    timeout: float, node: Any, path: str, ctx: RunContext, body: Callable[[], Awaitable[NodeResult]]
) -> NodeResult:
    """Run a composite node's `body` within its Node.timeout, counted from its first start (across
    the run's lives); a task parked inside it is due again when it runs out."""
    deadline = ctx.began_at(path) + timeout
    ran_out = f"{node.kind} {node.id}: its timeout of {timeout:g}s ran out"
    if time.time() >= deadline:  # while no replica ran the task: nothing inside it is called again
        ctx.abandon_unfinished(
            "CANCELLED", f"{ran_out} while no replica ran the task", earlier_lives_only=True, within=path
        )
        raise NodeFailed("DEADLINE_EXCEEDED", ran_out)
    ctx.suspensions.node_deadlines[path] = deadline
    try:
        async with asyncio.timeout_at(asyncio.get_running_loop().time() + deadline - time.time()):
            return await body()
    except TimeoutError:
        raise NodeFailed("DEADLINE_EXCEEDED", ran_out) from None
    finally:
        if not ctx.suspensions.parking:  # a parked run keeps it, for when it is due again
            del ctx.suspensions.node_deadlines[path]


async def run_recorded(
    ctx: RunContext, path: str, node_id: str, kind: str, protocol: str, body: Callable[[], Awaitable[NodeResult]]
) -> NodeResult:
    """Record the start of the node at `path`, run `body`, and record how it ended, whichever
    way that is (completed, failed, cancelled, timed out), so no state is left RUNNING."""
    raise_if_cancelled()  # asked to stop while a store call swallowed it: start no more nodes
    leaf = kind in LEAF_KINDS
    if replaying() is not None:  # a cancelled task's clean-up: it records nothing, and starts no leaf
        if leaf or not ctx.began(path):
            raise NodeFailed("CANCELLED", f"{kind} {node_id}: the task was cancelled")
        return await body()
    if leaf:
        ctx.suspensions.leaf_started()
    try:
        return await _recorded(ctx, path, node_id, kind, protocol, body)
    finally:
        if leaf:
            ctx.suspensions.leaf_ended()


async def _recorded(
    ctx: RunContext, path: str, node_id: str, kind: str, protocol: str, body: Callable[[], Awaitable[NodeResult]]
) -> NodeResult:
    await ctx.begin(path, node_id, kind, protocol)
    try:
        result = await body()
    except asyncio.CancelledError:
        if not ctx.suspensions.parking:  # a parked run's nodes stay as they are, for its next life
            ctx.fail(path, "CANCELLED", f"{kind} {node_id} was cancelled", cancelled=True)
        raise
    except NodeFailed as exc:
        ctx.fail(path, exc.code, exc.message)
        raise
    except TimeoutError:
        # A timeout of an enclosing scope: record it here, let the owner of the timeout report it.
        ctx.fail(path, "DEADLINE_EXCEEDED", f"{kind} {node_id}: a timeout ran out")
        raise
    problem = output_problem(result.output, ctx.limits, f"the output of {kind} {node_id}")
    if problem is not None:
        ctx.fail(path, *problem)
        raise NodeFailed(*problem)
    ctx.complete(path, result)  # written in the background, together with what happens next
    return result


def evaluate(
    expression: Expression,
    ctx: RunContext,
    prev: Payload,
    scope: Mapping[str, Any],
    node_id: str,
    what: str,
    extra: Mapping[str, Any] | None = None,
) -> Any:
    """Evaluate a node's expression against the run's variables (and `extra`); a runtime error
    fails the node with a message naming both."""
    variables = cel_variables(ctx, prev, scope, expression.names)
    if extra:
        variables.update(
            {k: v.python() if isinstance(v, Payload) else v for k, v in extra.items() if k in expression.names}
        )
    try:
        return expression.evaluate(variables)
    except ExpressionError as exc:
        raise NodeFailed("INVALID_ARGUMENT", f"node {node_id}: {what} {exc}") from None


def cel_variables(ctx: RunContext, prev: Payload, scope: Mapping[str, Any], names: frozenset[str]) -> dict[str, Any]:
    """The CEL context (docs/cel.md), holding only the variables an expression names, so that
    a long run's outputs are not converted for an expression that never reads them."""
    found: dict[str, Any] = {}
    if "input" in names:
        found["input"] = ctx.task_input.python()
    if "prev" in names:
        found["prev"] = prev.python()
    if STEPS in names:
        found[STEPS] = {node_id: output.python() for node_id, output in ctx.outputs_by_id.items()}
    for name in names & scope.keys():
        found[name] = _plain(scope[name])
    return found


def _plain(value: Any) -> Any:
    if isinstance(value, Payload):
        return value.python()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def output_problem(output: Payload, limits: Limits, what: str) -> tuple[str, str] | None:
    """Why `output` cannot be kept (too deep, too large), as (code, message), or None."""
    depth = output.depth(limits.max_value_depth)
    if depth > limits.max_value_depth:
        return "INVALID_ARGUMENT", str(ValueTooDeep(what, depth, limits.max_value_depth))
    if output.size > limits.max_value_bytes:
        return "RESOURCE_EXHAUSTED", (
            f"{what} is {output.size} bytes; a value may hold at most {limits.max_value_bytes} "
            "(MCP_LIMIT_MAX_VALUE_BYTES)"
        )
    return None


def given_input(ctx: RunContext, path: str) -> Payload | None:
    """What the node at `path` receives instead of what came before: a rerun's edited input."""
    if ctx.rerun_input is not None and path == ctx.task.rerun_from_step_path:
        return ctx.rerun_input
    return None


def child_path(parent: str, child_id: str, round_or_visit: int = 1) -> str:
    """`parent/child`, with `#n` for the n-th round or visit (n >= 2)."""
    suffix = f"#{round_or_visit}" if round_or_visit > 1 else ""
    return f"{parent}/{child_id}{suffix}"
