"""Compile a Workflow message into a Plan, reporting every problem as a field violation.

Validation and compilation are one pass: a workflow that compiles is valid, and every
violation names the field (for example `workflow.root.sequence.children[1].step.protocol`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

from google.protobuf import duration_pb2
from google.rpc import code_pb2

from mcp_sdk.proto import workflow_pb2
from mcp_server.engine.cel import (
    EVERYWHERE,
    IN_MAP_BODY,
    IN_SUPERVISED_CHILD,
    IN_TRANSITION,
    Expression,
    ExpressionError,
    compile_expression,
)
from mcp_server.engine.plan import (
    DEFAULT_RETRYABLE_CODES,
    AdaptivePlan,
    FallbackPlan,
    MapPlan,
    ParallelPlan,
    Plan,
    PlanNode,
    RetryPolicy,
    SequencePlan,
    StatePlan,
    StepPlan,
    SupervisePlan,
    TransitionPlan,
)
from mcp_server.errors import ViolationCollector
from mcp_server.settings import Limits

WORKFLOW_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
NODE_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
COMPREHENSION = re.compile(r"\.\s*(?:map|filter|all|exists|exists_one)\s*\(")
GRPC_CODES = frozenset(code_pb2.Code.keys())
# Retrying these can never help: the same request would fail the same way.
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
MAX_DURATION_SECONDS = 7 * 24 * 3600
MAX_BACKOFF_SECONDS = 3600
MAX_ATTEMPTS = 100

T = TypeVar("T")


@dataclass
class _Scope:
    """What the compiler carries down the tree."""

    violations: ViolationCollector
    limits: Limits
    known_protocols: frozenset[str] | None
    default_retry: RetryPolicy
    default_step_timeout: float | None
    default_attempt_timeout: float | None
    max_depth: int
    max_nodes: int
    max_rounds: int
    max_transitions: int
    max_map_items: int
    max_concurrency: int
    variables: frozenset[str] = EVERYWHERE
    ids: dict[str, str] = field(default_factory=dict)
    node_count: int = 0
    depth: int = 0
    protocols: set[str] = field(default_factory=set)
    uses: list[tuple[str, str]] = field(default_factory=list)


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
    scope = _Scope(
        violations=violations,
        limits=limits,
        known_protocols=frozenset(known_protocols) if known_protocols is not None else None,
        default_retry=_retry_policy(workflow.defaults.retry, RetryPolicy(), "workflow.defaults.retry", violations)
        if workflow.defaults.HasField("retry")
        else RetryPolicy(),
        default_step_timeout=_duration(workflow.defaults, "step_timeout", "workflow.defaults.step_timeout", violations)
        or default_step_timeout,
        default_attempt_timeout=_duration(
            workflow.defaults, "attempt_timeout", "workflow.defaults.attempt_timeout", violations
        ),
        max_depth=_bounded(wf_limits.max_depth, limits.max_workflow_depth, "workflow.limits.max_depth", violations),
        max_nodes=_bounded(wf_limits.max_nodes, limits.max_workflow_nodes, "workflow.limits.max_nodes", violations),
        max_rounds=_bounded(wf_limits.max_rounds, limits.max_rounds, "workflow.limits.max_rounds", violations),
        max_transitions=_bounded(
            wf_limits.max_transitions, limits.max_transitions, "workflow.limits.max_transitions", violations
        ),
        max_map_items=_bounded(
            wf_limits.max_map_items, limits.max_map_items, "workflow.limits.max_map_items", violations
        ),
        max_concurrency=_bounded(
            wf_limits.max_concurrency, limits.max_concurrency, "workflow.limits.max_concurrency", violations
        ),
    )
    task_timeout = (
        _duration(workflow.defaults, "task_timeout", "workflow.defaults.task_timeout", violations)
        or default_task_timeout
    )
    root: PlanNode | None = None
    if not workflow.HasField("root"):
        violations.add("workflow.root", "a workflow needs a root node")
    else:
        root = _node(workflow.root, "workflow.root", scope, depth=1, default_id="root")
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
    )


@contextmanager
def _variables(scope: _Scope, extra: frozenset[str]) -> Iterator[None]:
    """Compile a subtree whose expressions also see `extra` (a map body, a supervised child)."""
    outer = scope.variables
    scope.variables = outer | extra
    try:
        yield
    finally:
        scope.variables = outer


def _bounded(value: int, server_max: int, path: str, violations: ViolationCollector) -> int:
    if value < 0:
        violations.add(path, "must not be negative")
        return server_max
    if value > server_max:
        violations.add(path, f"{value} exceeds the server limit of {server_max}")
        return server_max
    return value or server_max


def _duration(message: object, name: str, path: str, violations: ViolationCollector) -> float | None:
    if not message.HasField(name):  # type: ignore[attr-defined]
        return None
    value: duration_pb2.Duration = getattr(message, name)
    seconds = value.seconds + value.nanos / 1e9
    if seconds <= 0:
        violations.add(path, "must be positive")
        return None
    if seconds > MAX_DURATION_SECONDS:
        violations.add(path, f"must be at most {MAX_DURATION_SECONDS} seconds")
        return None
    return seconds


def _retry_policy(
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


def _expression(source: str, path: str, scope: _Scope, extra: frozenset[str] = frozenset()) -> Expression | None:
    if not source:
        return None
    if len(source) > scope.limits.max_expression_length:
        scope.violations.add(
            path, f"expression is {len(source)} characters; the limit is {scope.limits.max_expression_length}"
        )
        return None
    comprehensions = len(COMPREHENSION.findall(source))
    if comprehensions > scope.limits.max_expression_comprehensions:
        scope.violations.add(
            path,
            f"expression uses {comprehensions} comprehensions (map, filter, all, exists); "
            f"the limit is {scope.limits.max_expression_comprehensions}",
        )
        return None
    try:
        return compile_expression(source, scope.limits.max_value_depth, scope.variables | extra)
    except ExpressionError as exc:
        scope.violations.add(path, f"CEL does not compile: {exc}")
        return None


def _protocol(name: str, path: str, scope: _Scope) -> None:
    if not name:
        scope.violations.add(path, "a protocol name is required")
    elif scope.known_protocols is not None and name not in scope.known_protocols:
        scope.violations.add(path, f"unknown protocol {name!r}: no registered plugin serves it")
    else:
        scope.protocols.add(name)
        scope.uses.append((path, name))


def _children(
    nodes: Iterable[workflow_pb2.Node], path: str, scope: _Scope, depth: int, kind: str
) -> tuple[PlanNode, ...]:
    compiled = [
        _node(child, f"{path}[{i}]", scope, depth + 1, default_id=_default_id(child, i))
        for i, child in enumerate(nodes)
    ]
    if not compiled:
        scope.violations.add(path, f"a {kind} node needs at least one child")
    return tuple(c for c in compiled if c is not None)


def _default_id(node: workflow_pb2.Node, index: int) -> str:
    if node.WhichOneof("kind") == "step" and node.step.protocol:
        return node.step.protocol
    return f"{node.WhichOneof('kind') or 'node'}{index}"


def _node(node: workflow_pb2.Node, path: str, scope: _Scope, depth: int, default_id: str) -> PlanNode | None:
    scope.node_count += 1
    scope.depth = max(scope.depth, depth)
    if depth > scope.max_depth:
        scope.violations.add(path, f"nesting depth {depth} exceeds the limit of {scope.max_depth}")
        return None
    node_id = node.id or default_id
    if not NODE_ID.match(node_id):
        scope.violations.add(f"{path}.id", "must be 1-64 letters, digits, '_', '.' or '-'")
    elif node_id in scope.ids:
        scope.violations.add(
            f"{path}.id",
            f"duplicate node id {node_id!r} (first used at {scope.ids[node_id]}); give each node a unique id",
        )
    else:
        scope.ids[node_id] = path
    kind = node.WhichOneof("kind")
    builder = _BUILDERS.get(kind or "")
    if builder is None:
        scope.violations.add(path, "a node must be one of step, sequence, parallel, map, supervise, adaptive")
        return None
    return builder(node_id, getattr(node, kind or ""), f"{path}.{kind}", scope, depth)


def _step(node_id: str, step: workflow_pb2.StepNode, path: str, scope: _Scope, depth: int) -> StepPlan:
    _protocol(step.protocol, f"{path}.protocol", scope)
    fallbacks = []
    for i, fb in enumerate(step.fallbacks):
        _protocol(fb.protocol, f"{path}.fallbacks[{i}].protocol", scope)
        fallbacks.append(FallbackPlan(fb.protocol, _expression(fb.input, f"{path}.fallbacks[{i}].input", scope)))
    retry = (
        _retry_policy(step.retry, scope.default_retry, f"{path}.retry", scope.violations)
        if step.HasField("retry")
        else scope.default_retry
    )
    return StepPlan(
        id=node_id,
        protocol=step.protocol,
        input=_expression(step.input, f"{path}.input", scope),
        retry=retry,
        timeout=_duration(step, "timeout", f"{path}.timeout", scope.violations) or scope.default_step_timeout,
        attempt_timeout=_duration(step, "attempt_timeout", f"{path}.attempt_timeout", scope.violations)
        or scope.default_attempt_timeout,
        fallbacks=tuple(fallbacks),
        stream=step.stream,
    )


def _sequence(node_id: str, seq: workflow_pb2.SequenceNode, path: str, scope: _Scope, depth: int) -> SequencePlan:
    return SequencePlan(node_id, _children(seq.children, f"{path}.children", scope, depth, "sequence"))


def _concurrency(value: int, path: str, scope: _Scope) -> int:
    if value < 0:
        scope.violations.add(path, "must not be negative (0 means no limit)")
    elif value > scope.max_concurrency:
        scope.violations.add(path, f"{value} exceeds the limit of {scope.max_concurrency}")
    return min(value, scope.max_concurrency) if value > 0 else scope.max_concurrency


_JOINS = {
    workflow_pb2.JOIN_POLICY_UNSPECIFIED: "all",
    workflow_pb2.JOIN_POLICY_ALL: "all",
    workflow_pb2.JOIN_POLICY_ANY: "any",
    workflow_pb2.JOIN_POLICY_QUORUM: "quorum",
}


def _parallel(node_id: str, par: workflow_pb2.ParallelNode, path: str, scope: _Scope, depth: int) -> ParallelPlan:
    children = _children(par.children, f"{path}.children", scope, depth, "parallel")
    join = _JOINS.get(par.join, "all")
    if join == "quorum" and not 1 <= par.quorum <= len(par.children):
        scope.violations.add(f"{path}.quorum", f"must be between 1 and the number of children ({len(par.children)})")
    return ParallelPlan(
        id=node_id,
        children=children,
        join=join,
        quorum=par.quorum,
        fail_fast=par.fail_fast,
        max_concurrency=_concurrency(par.max_concurrency, f"{path}.max_concurrency", scope),
    )


def _map(node_id: str, mp: workflow_pb2.MapNode, path: str, scope: _Scope, depth: int) -> MapPlan | None:
    items = _expression(mp.items, f"{path}.items", scope)
    if not mp.items:
        scope.violations.add(f"{path}.items", "a map node needs a CEL expression that yields a list")
    if not mp.HasField("body"):
        scope.violations.add(f"{path}.body", "a map node needs a body")
        return None
    with _variables(scope, IN_MAP_BODY):
        body = _node(mp.body, f"{path}.body", scope, depth + 1, default_id=_default_id(mp.body, 0))
    if items is None or body is None:
        return None
    return MapPlan(
        node_id,
        items,
        body,
        _concurrency(mp.max_concurrency, f"{path}.max_concurrency", scope),
        mp.fail_fast,
        scope.max_map_items,
    )


def _rounds(value: int, limit: int, path: str, scope: _Scope, default: int) -> int:
    if value < 0 or value > limit:
        scope.violations.add(path, f"must be between 1 and {limit} (0 means {default})")
        return default
    return value or default


def _supervise(node_id: str, sup: workflow_pb2.SuperviseNode, path: str, scope: _Scope, depth: int) -> SupervisePlan:
    _protocol(sup.supervisor, f"{path}.supervisor", scope)
    with _variables(scope, IN_SUPERVISED_CHILD):
        children = _children(sup.children, f"{path}.children", scope, depth, "supervise")
    return SupervisePlan(
        id=node_id,
        supervisor=sup.supervisor,
        children=children,
        max_rounds=_rounds(sup.max_rounds, scope.max_rounds, f"{path}.max_rounds", scope, min(3, scope.max_rounds)),
        retry=scope.default_retry,
        attempt_timeout=scope.default_attempt_timeout,
    )


def _adaptive(
    node_id: str, ada: workflow_pb2.AdaptiveNode, path: str, scope: _Scope, depth: int
) -> AdaptivePlan | None:
    if ada.router:
        _protocol(ada.router, f"{path}.router", scope)
    if not ada.states:
        scope.violations.add(f"{path}.states", "an adaptive node needs at least one state")
        return None
    names = [s.name for s in ada.states]
    states: dict[str, StatePlan] = {}
    for i, state in enumerate(ada.states):
        spath = f"{path}.states[{i}]"
        if not NODE_ID.match(state.name):
            scope.violations.add(f"{spath}.name", "must be 1-64 letters, digits, '_', '.' or '-'")
        elif state.name in states:
            scope.violations.add(f"{spath}.name", f"duplicate state name {state.name!r}")
        if not state.HasField("node"):
            scope.violations.add(f"{spath}.node", "a state needs a node")
            continue
        body = _node(state.node, f"{spath}.node", scope, depth + 1, default_id=state.node.id or state.name)
        transitions = []
        for j, tr in enumerate(state.transitions):
            if tr.to not in names:
                scope.violations.add(
                    f"{spath}.transitions[{j}].to", f"unknown state {tr.to!r}; states are {', '.join(names)}"
                )
            transitions.append(
                TransitionPlan(_expression(tr.when, f"{spath}.transitions[{j}].when", scope, IN_TRANSITION), tr.to)
            )
        if state.terminal and state.transitions:
            scope.violations.add(f"{spath}.transitions", "a terminal state has no transitions")
        if not state.terminal and not state.transitions and not ada.router:
            scope.violations.add(
                f"{spath}.transitions", "a non-terminal state needs transitions (or the node needs a router)"
            )
        if body is not None:
            states[state.name] = StatePlan(state.name, body, tuple(transitions), state.terminal)
    initial = ada.initial_state or names[0]
    if initial not in names:
        scope.violations.add(f"{path}.initial_state", f"unknown state {initial!r}")
    if not any(s.terminal for s in ada.states) and not ada.router:
        scope.violations.add(f"{path}.states", "at least one state must be terminal")
    return AdaptivePlan(
        id=node_id,
        initial_state=initial,
        states=states,
        router=ada.router or None,
        max_transitions=_rounds(
            ada.max_transitions, scope.max_transitions, f"{path}.max_transitions", scope, scope.max_transitions
        ),
        retry=scope.default_retry,
        attempt_timeout=scope.default_attempt_timeout,
    )


_BUILDERS: dict[str, Callable[..., PlanNode | None]] = {
    "step": _step,
    "sequence": _sequence,
    "parallel": _parallel,
    "map": _map,
    "supervise": _supervise,
    "adaptive": _adaptive,
}
