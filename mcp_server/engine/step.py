"""Step nodes: one protocol call, wrapped in the step's retry policy, timeouts and fallbacks.

Order of defences: per-attempt deadline (applied by the caller) -> retries with exponential
backoff and jitter on retryable codes (attempts.py) -> the protocol's breaker (an open breaker
fails the attempt at once and is never retried) -> the fallbacks in order -> the step fails. The
step timeout bounds all of it.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Mapping
from typing import Any

from mcp_sdk.proto import task_pb2
from mcp_server.engine.attempts import Call, StepObserver, call_with_retries
from mcp_server.engine.caching import cache_key, cached_output, keep_output
from mcp_server.engine.cel import Expression
from mcp_server.engine.context import NodeFailed, NodeResult, RunContext
from mcp_server.engine.event_types import E
from mcp_server.engine.executor import evaluate, given_input, run_recorded, runs
from mcp_server.engine.payload import Payload
from mcp_server.engine.plan import StepPlan
from mcp_server.engine.ports import ProtocolCallError
from mcp_server.engine.throttle import asks_of
from mcp_server.engine.values import as_object


@runs("step")
async def run_step(node: StepPlan, path: str, value: Payload, ctx: RunContext, scope: Mapping[str, Any]) -> NodeResult:
    if given_input(ctx, path) is not None:  # a rerun's edited input: what the protocol receives, as given
        primary_input = value.as_object()
    else:
        primary_input = _input(node.input, value, ctx, scope, node.id, "input")
    if scope.get("feedback") and "feedback" not in primary_input.struct().fields:
        # A supervisor sent this subtree back: its feedback reaches every step's input.
        primary_input = Payload.of_python(
            {**primary_input.python(), "feedback": scope["feedback"], "round": scope.get("round", 1)}
        )
    ctx.record_input(path, primary_input)
    key = None
    if node.cache is not None and ctx.step_cache is not None:
        key = cache_key(node, primary_input, value, ctx, scope)
        if (hit := await cached_output(key, path, ctx)) is not None:
            return hit
    state = ctx.state(path)
    observer = StepObserver(ctx, path, _deadline(node, state, ctx.began_at(path)))
    if state.HasField("wait"):  # it parked waiting for units: it asks again first
        observer.waiting_for = "rate-limit units"
    loop = asyncio.get_running_loop()
    try:
        when = None if observer.deadline is None else loop.time() + observer.deadline - time.time()
        async with asyncio.timeout_at(when):
            result = await _run_candidates(node, path, primary_input, value, scope, ctx, observer)
    except TimeoutError:
        ctx.state(path).ClearField("wait")
        if observer.waiting_for:
            raise NodeFailed(
                "RESOURCE_EXHAUSTED",
                f"step {node.id}: the step timeout of {node.timeout:g}s ran out while it waited "
                f"for {observer.waiting_for}",
            ) from None
        raise NodeFailed(
            "DEADLINE_EXCEEDED", f"step {node.id}: the step timeout of {node.timeout:g}s ran out"
        ) from None
    if key is not None and node.cache is not None:
        await keep_output(key, node.cache.ttl, path, result, ctx)
    return result


def _deadline(node: StepPlan, state: task_pb2.StepState, began: float) -> float | None:
    """When the step's timeout runs out: counted from when the step first began, whichever life
    of the run this is (a step in flight at a crash or a shutdown has what is left of its budget
    when it runs again, as a task has of its task_timeout: `began`), or, for a step that parked its
    task while it waited for rate-limit units, when it ran out for the life that parked (kept in `wait`)."""
    if state.HasField("wait") and state.wait.HasField("deadline"):
        return float(state.wait.deadline.seconds + state.wait.deadline.nanos / 1e9)
    return None if node.timeout is None else began + node.timeout


def _input(
    expression: Expression | None, value: Payload, ctx: RunContext, scope: Mapping[str, Any], node_id: str, what: str
) -> Payload:
    """A step's input: its expression's result, else the value it was given; always an object."""
    if expression is None:
        return value.as_object()
    if not expression.names:
        # A literal (`{'ms': 100}`): CEL is pure, so it is the same value in every run; evaluated
        # once, and its one Payload (shared like any value, never changed) serves them all.
        constant = _CONSTANT_INPUTS.get(expression)
        if constant is None:
            constant = _CONSTANT_INPUTS[expression] = Payload.of_python(
                as_object(evaluate(expression, ctx, value, scope, node_id, what))
            )
        return constant
    return Payload.of_python(as_object(evaluate(expression, ctx, value, scope, node_id, what)))


_CONSTANT_INPUTS: weakref.WeakKeyDictionary[Expression, Payload] = weakref.WeakKeyDictionary()


async def _run_candidates(
    node: StepPlan,
    path: str,
    primary_input: Payload,
    value: Payload,
    scope: Mapping[str, Any],
    ctx: RunContext,
    observer: StepObserver,
) -> NodeResult:
    candidates = [(node.protocol, primary_input)]
    for fb in node.fallbacks:
        fb_input = _input(fb.input, value, ctx, scope, node.id, "fallback input") if fb.input else primary_input
        candidates.append((fb.protocol, fb_input))
    errors: list[str] = []
    last_code = "UNAVAILABLE"
    # a step resumed after a crash or a shutdown goes on with the protocol it was calling
    resumed_at = min(ctx.state(path).fallback_index, len(candidates) - 1)
    for index, (protocol, input_data) in enumerate(candidates):
        if index < resumed_at:
            errors.append(f"{protocol}: failed before the run was resumed")
            continue
        if index > resumed_at:
            state = ctx.state(path)
            state.fallback_index, state.failed_attempts = index, 0
            ctx.emit(
                E.TASK_EVENT_TYPE_FALLBACK_USED,
                step_path=path,
                protocol=protocol,
                flush_soon=True,
                message=f"{candidates[index - 1][0]} failed; falling back to {protocol}",
                data={"failed": candidates[index - 1][0], "error": errors[-1]},
            )
        asks = (
            ()
            if ctx.rate_limits is None
            else asks_of(node.rate_limits, protocol, input_data, value, ctx, scope, node.id)
        )
        call = Call(protocol, input_data, node.retry, node.attempt_timeout, node.stream, asks, node.idle_timeout)
        try:
            result = await call_with_retries(call, path, ctx, observer)
        except ProtocolCallError as exc:
            errors.append(f"{protocol}: {exc}")
            last_code = exc.code
            continue
        if index > 0:
            ctx.state(path).fallback_protocol = protocol
            ctx.record_input(path, input_data)
        return result
    raise NodeFailed(last_code, f"step {node.id} failed: " + "; ".join(errors))


async def run_auxiliary_call(call: Call, path: str, owner: str, ctx: RunContext) -> NodeResult:
    """Run a call a composite node makes for itself (a supervisor, a router) as a step of its
    own at `path`, so that it is recorded, evented and not repeated after a resume."""
    done = ctx.finished(path)
    if done is not None:
        return done

    async def body() -> NodeResult:
        ctx.record_input(path, call.input)
        try:
            return await call_with_retries(call, path, ctx)
        except ProtocolCallError as exc:
            raise NodeFailed(exc.code, f"{owner}: {call.protocol} failed: {exc}") from None

    return await run_recorded(ctx, path, path.rsplit("/", 1)[-1].split("#")[0], "step", call.protocol, body)
