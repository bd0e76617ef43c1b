"""Compiling the fields every node kind shares: durations, retry policies, CEL expressions,
protocol names and bounds. Each problem is a field violation naming its path."""

from __future__ import annotations

import re

from google.rpc import code_pb2

from mcp_sdk.proto import workflow_pb2
from mcp_server.engine.cel import Expression, ExpressionError, compile_expression
from mcp_server.engine.compiler.scope import Scope
from mcp_server.engine.plan import DEFAULT_RETRYABLE_CODES, RetryPolicy
from mcp_server.errors import ViolationCollector

GRPC_CODES = frozenset(code_pb2.Code.keys())

NEVER_RETRYABLE = frozenset(
    {
        "OK",
        "INVALID_ARGUMENT",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "FAILED_PRECONDITION",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "UNAUTHENTICATED",
        "CANCELLED",
    }
)

MAX_BACKOFF_SECONDS = 3600

MAX_ATTEMPTS = 100


def bounded(value: int, server_max: int, path: str, violations: ViolationCollector) -> int:
    if value < 0:
        violations.add(path, "must not be negative")
        return server_max
    if value > server_max:
        violations.add(path, f"{value} exceeds the server limit of {server_max}")
        return server_max
    return value or server_max


def retry_policy(
    message: workflow_pb2.RetryPolicy, base: RetryPolicy, path: str, violations: ViolationCollector
) -> RetryPolicy:
    def seconds(name: str, default: float) -> float:
        if not message.HasField(name):
            return default
        value = getattr(message, name)
        result = float(value.seconds + value.nanos / 1e9)
        if result < 0 or result > MAX_BACKOFF_SECONDS:
            violations.add(f"{path}.{name}", f"must be between 0 and {MAX_BACKOFF_SECONDS} seconds")
            return default
        return result

    if not 0 <= message.max_attempts <= MAX_ATTEMPTS:
        violations.add(f"{path}.max_attempts", f"must be between 1 and {MAX_ATTEMPTS} (0 means the default)")
    if message.backoff_multiplier and not 1 <= message.backoff_multiplier <= 10:
        violations.add(f"{path}.backoff_multiplier", "must be between 1 and 10 (0 means the default)")
    if not 0 <= message.jitter <= 1:
        violations.add(f"{path}.jitter", "must be between 0 and 1")
    codes = frozenset(c.upper() for c in message.retryable_codes)
    for code in sorted(codes):
        if code not in GRPC_CODES:
            violations.add(f"{path}.retryable_codes", f"{code!r} is not a gRPC status code name")
        elif code in NEVER_RETRYABLE:
            violations.add(f"{path}.retryable_codes", f"{code} is never retryable: the same request fails the same way")
    initial = seconds("initial_backoff", base.initial_backoff)
    maximum = seconds("max_backoff", base.max_backoff)
    if maximum < initial:
        violations.add(f"{path}.max_backoff", "must not be less than initial_backoff")
    return RetryPolicy(
        max_attempts=message.max_attempts if 0 < message.max_attempts <= MAX_ATTEMPTS else base.max_attempts,
        initial_backoff=initial,
        max_backoff=max(maximum, initial),
        multiplier=message.backoff_multiplier or base.multiplier,
        jitter=message.jitter if 0 < message.jitter <= 1 else base.jitter,
        retryable_codes=codes
        if codes and codes <= GRPC_CODES - NEVER_RETRYABLE
        else (base.retryable_codes or DEFAULT_RETRYABLE_CODES),
    )


# a rate limit's key: what PutRateLimit accepts, and what a step may name
RATE_LIMIT_KEY = re.compile(r"^[^\s\x00-\x1f\x7f]{1,256}$")


def expression(source: str, path: str, scope: Scope, extra: frozenset[str] = frozenset()) -> Expression | None:
    if not source:
        return None
    if len(source) > scope.limits.max_expression_length:
        scope.violations.add(
            path, f"expression is {len(source)} characters; the limit is {scope.limits.max_expression_length}"
        )
        return None
    try:
        return compile_expression(source, scope.limits, scope.variables | extra)
    except ExpressionError as exc:
        scope.violations.add(path, f"CEL does not compile: {exc}")
        return None


def protocol(name: str, path: str, scope: Scope) -> None:
    if not name:
        scope.violations.add(path, "a protocol name is required")
    elif scope.known_protocols is not None and name not in scope.known_protocols:
        scope.violations.add(path, f"unknown protocol {name!r}: no registered plugin serves it")
    else:
        scope.protocols.add(name)
        scope.uses.append((path, name))


def concurrency(value: int, path: str, scope: Scope) -> int:
    if value < 0:
        scope.violations.add(path, "must not be negative (0 means no limit)")
    elif value > scope.max_concurrency:
        scope.violations.add(path, f"{value} exceeds the limit of {scope.max_concurrency}")
    return min(value, scope.max_concurrency) if value > 0 else scope.max_concurrency


def rounds(value: int, limit: int, path: str, scope: Scope, default: int) -> int:
    if value < 0 or value > limit:
        scope.violations.add(path, f"must be between 1 and {limit} (0 means {default})")
        return default
    return value or default
