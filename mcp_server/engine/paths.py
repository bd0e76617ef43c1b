"""Step paths, read back: which node of a plan a path of a run names.

A path is the node ids from the root down, each with `#n` for the n-th round or visit (n >= 2)
or `[i]` for a map's i-th item (executor.child_path, mapping.py); a supervisor's or a router's
own call is `supervisor#n` / `router#n` under its node.
"""

from __future__ import annotations

from mcp_server.engine.plan import (
    AdaptivePlan,
    AgentPlan,
    MapPlan,
    ParallelPlan,
    PlanNode,
    RecoverPlan,
    SequencePlan,
    StepPlan,
    SubworkflowPlan,
    SupervisePlan,
)


def node_id_of(segment: str) -> str:
    """The node id in one segment of a path: without a round (`#2`) or an item (`[3]`)."""
    return segment.split("#", 1)[0].split("[", 1)[0]


def kind_and_protocol(root: PlanNode, path: str) -> tuple[str, str] | None:
    """What the node at `path` is in the plan under `root`: its kind and (for a call) its
    protocol; None when the plan has no such node."""
    found = _find(root, path)
    if found is None or isinstance(found, tuple):
        return found
    return found.kind, found.protocol if isinstance(found, StepPlan) else ""


def node_at(root: PlanNode, path: str) -> PlanNode | None:
    """The node of the plan under `root` that `path` names; None when there is none (or the
    path names a supervisor's or a router's own call, which is no node of the plan)."""
    found = _find(root, path)
    return None if isinstance(found, tuple) else found


def _find(root: PlanNode, path: str) -> PlanNode | tuple[str, str] | None:
    """The node at `path`, or (kind, protocol) of a supervisor's or a router's call."""
    segments = path.split("/")
    if node_id_of(segments[0]) != root.id:
        return None
    node = root
    for depth, segment in enumerate(segments[1:], start=1):
        wanted = node_id_of(segment)
        last = depth == len(segments) - 1
        if isinstance(node, SupervisePlan) and wanted == "supervisor":
            return ("step", node.supervisor) if last else None
        if isinstance(node, AdaptivePlan) and wanted == "router" and node.router:
            return ("step", node.router) if last else None
        found = next((child for child in _children(node) if child.id == wanted), None)
        if found is None:
            return None
        node = found
    return node


def _children(node: PlanNode) -> tuple[PlanNode, ...]:
    if isinstance(node, SequencePlan | ParallelPlan | SupervisePlan):
        return node.children
    if isinstance(node, MapPlan):
        return (node.body,)
    if isinstance(node, AdaptivePlan):
        return tuple(state.node for state in node.states.values())
    if isinstance(node, RecoverPlan):
        return (node.body, node.handler)
    if isinstance(node, SubworkflowPlan):
        return (node.root,)
    if isinstance(node, AgentPlan):
        return (node.model, *(tool.node for tool in node.tools))
    return ()
