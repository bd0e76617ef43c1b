"""What the compiler carries down the tree (Scope), and the table of node builders: each node
kind's module registers its builder here (`@builds("step")`), and `compile_node` dispatches on
the kind. The builder modules import this one, never the other way round."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from mcp_sdk.proto import workflow_pb2
from mcp_sdk.workflow_tree import default_node_id
from mcp_server.engine.cel import EVERYWHERE
from mcp_server.engine.compiler.durations import duration
from mcp_server.engine.plan import COMPOSITES, LEAF_KINDS, PlanNode, RetryPolicy
from mcp_server.errors import ViolationCollector
from mcp_server.settings import Limits

# why a leaf takes no Node.timeout
LEAF_TIMEOUTS = {
    "step": "a step node is bounded by its own step.timeout",
    "wait": "a wait node is bounded by its own wait.timeout",
    "sleep": "a sleep node is bounded by its own sleep.duration",
    "publish": "a publish node only submits tasks: it takes no timeout",
}
WORKFLOW_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
NODE_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass
class Scope:
    """What the compiler carries down the tree."""

    violations: ViolationCollector
    limits: Limits
    known_protocols: frozenset[str] | None
    default_retry: RetryPolicy
    default_step_timeout: float | None
    default_attempt_timeout: float | None
    server_step_timeout: float | None  # the server's default, for a subworkflow without its own
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
    waits: dict[str, Any] = field(default_factory=dict)  # wait plans by node id
    suspends: bool = False  # a wait or a sleep was compiled
    cleans_up_on_cancel: bool = False  # a recover node with on_cancel was compiled


Builder = Callable[[str, Any, str, Scope, int], PlanNode | None]
BUILDERS: dict[str, Builder] = {}


def builds(kind: str) -> Callable[[Builder], Builder]:
    """Register the function that compiles nodes of `kind`: (node id, the kind's message, its
    field path, the scope, its depth) -> a plan node, or None when it cannot be compiled."""

    def register(builder: Builder) -> Builder:
        BUILDERS[kind] = builder
        return builder

    return register


@contextmanager
def variables_in(scope: Scope, extra: frozenset[str]) -> Iterator[None]:
    """Compile a subtree whose expressions also see `extra` (a map body, a supervised child)."""
    outer = scope.variables
    scope.variables = outer | extra
    try:
        yield
    finally:
        scope.variables = outer


def compile_children(
    nodes: Iterable[workflow_pb2.Node], path: str, scope: Scope, depth: int, kind: str
) -> tuple[PlanNode, ...]:
    compiled = [
        compile_node(child, f"{path}[{i}]", scope, depth + 1, default_id=default_node_id(child, i))
        for i, child in enumerate(nodes)
    ]
    if not compiled:
        scope.violations.add(path, f"a {kind} node needs at least one child")
    return tuple(c for c in compiled if c is not None)


def compile_node(node: workflow_pb2.Node, path: str, scope: Scope, depth: int, default_id: str) -> PlanNode | None:
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
    builder = BUILDERS.get(kind or "")
    if builder is None:
        scope.violations.add(
            path,
            "a node must be one of step, sequence, parallel, map, supervise, adaptive, wait, sleep, subworkflow,"
            " recover, publish, agent",
        )
        return None
    built = builder(node_id, getattr(node, kind or ""), f"{path}.{kind}", scope, depth)
    timeout = duration(node, "timeout", f"{path}.timeout", scope.violations)
    if timeout is not None and kind in LEAF_KINDS:
        scope.violations.add(f"{path}.timeout", LEAF_TIMEOUTS[kind])
    elif timeout is not None and isinstance(built, COMPOSITES):
        built = dataclasses.replace(built, timeout=timeout)
    return built
