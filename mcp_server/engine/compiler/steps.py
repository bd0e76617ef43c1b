"""Compiling step nodes: one protocol call, its input, retry policy, timeouts and fallbacks."""

from __future__ import annotations

from mcp_sdk.proto import workflow_pb2
from mcp_server.engine.compiler.durations import duration
from mcp_server.engine.compiler.fields import RATE_LIMIT_KEY, expression, protocol, retry_policy
from mcp_server.engine.compiler.scope import Scope, builds
from mcp_server.engine.plan import CachePlan, FallbackPlan, RateLimitUsePlan, StepPlan


@builds("step")
def compile_step(node_id: str, step: workflow_pb2.StepNode, path: str, scope: Scope, depth: int) -> StepPlan:
    protocol(step.protocol, f"{path}.protocol", scope)
    fallbacks = []
    for i, fb in enumerate(step.fallbacks):
        protocol(fb.protocol, f"{path}.fallbacks[{i}].protocol", scope)
        fallbacks.append(FallbackPlan(fb.protocol, expression(fb.input, f"{path}.fallbacks[{i}].input", scope)))
    retry = (
        retry_policy(step.retry, scope.default_retry, f"{path}.retry", scope.violations)
        if step.HasField("retry")
        else scope.default_retry
    )
    return StepPlan(
        id=node_id,
        protocol=step.protocol,
        input=expression(step.input, f"{path}.input", scope),
        retry=retry,
        timeout=duration(step, "timeout", f"{path}.timeout", scope.violations) or scope.default_step_timeout,
        attempt_timeout=duration(step, "attempt_timeout", f"{path}.attempt_timeout", scope.violations)
        or scope.default_attempt_timeout,
        fallbacks=tuple(fallbacks),
        stream=step.stream,
        rate_limits=tuple(
            _rate_limit_use(use, f"{path}.rate_limits[{i}]", scope) for i, use in enumerate(step.rate_limits)
        ),
        cache=_cache(step, f"{path}.cache", scope) if step.HasField("cache") else None,
        idle_timeout=_idle_timeout(step, f"{path}.idle_timeout", scope),
    )


def _idle_timeout(step: workflow_pb2.StepNode, path: str, scope: Scope) -> float | None:
    if step.HasField("idle_timeout") and not step.stream:
        scope.violations.add(
            path, "needs stream: true (a unary call sends nothing before its result; bound it with attempt_timeout)"
        )
    return duration(step, "idle_timeout", path, scope.violations)


def _cache(step: workflow_pb2.StepNode, path: str, scope: Scope) -> CachePlan:
    ttl = duration(step.cache, "ttl", f"{path}.ttl", scope.violations)
    if ttl is None and not step.cache.HasField("ttl"):
        scope.violations.add(f"{path}.ttl", "is required: how long an output is reused")
    if ttl is not None and ttl < 1:
        scope.violations.add(f"{path}.ttl", "must be at least 1 s")
    return CachePlan(
        expression(step.cache.key, f"{path}.key", scope, frozenset({"call"})), ttl or 0.0, step.cache.shared
    )


def _rate_limit_use(use: workflow_pb2.RateLimitUse, path: str, scope: Scope) -> RateLimitUsePlan:
    if bool(use.key) == bool(use.key_expression):
        scope.violations.add(path, "set one of key (a literal) and key_expression (CEL)")
    elif use.key and not RATE_LIMIT_KEY.match(use.key):
        scope.violations.add(f"{path}.key", "must be 1-256 characters, none of them a space or a control character")
    return RateLimitUsePlan(
        use.key,
        expression(use.key_expression, f"{path}.key_expression", scope),
        expression(use.units, f"{path}.units", scope, frozenset({"call"})),
    )
