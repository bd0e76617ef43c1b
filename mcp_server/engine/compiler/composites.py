"""Compiling the composite nodes: sequence, parallel, map, supervise, adaptive and recover."""

from __future__ import annotations

from mcp_sdk.proto import workflow_pb2
from mcp_sdk.workflow_tree import all_nodes, default_node_id
from mcp_server.engine.cel import IN_HANDLER, IN_MAP_BODY, IN_SUPERVISED_CHILD, IN_TRANSITION
from mcp_server.engine.compiler.fields import GRPC_CODES, concurrency, expression, protocol, rounds
from mcp_server.engine.compiler.scope import (
    NODE_ID,
    Scope,
    builds,
    compile_children,
    compile_node,
    variables_in,
)
from mcp_server.engine.plan import (
    AdaptivePlan,
    MapPlan,
    ParallelPlan,
    PlanNode,
    RecoverPlan,
    SequencePlan,
    StatePlan,
    SupervisePlan,
    TransitionPlan,
)

_JOINS = {
    workflow_pb2.JOIN_POLICY_UNSPECIFIED: "all",
    workflow_pb2.JOIN_POLICY_ALL: "all",
    workflow_pb2.JOIN_POLICY_ANY: "any",
    workflow_pb2.JOIN_POLICY_QUORUM: "quorum",
}


@builds("sequence")
def compile_sequence(node_id: str, seq: workflow_pb2.SequenceNode, path: str, scope: Scope, depth: int) -> SequencePlan:
    return SequencePlan(node_id, compile_children(seq.children, f"{path}.children", scope, depth, "sequence"))


@builds("parallel")
def compile_parallel(node_id: str, par: workflow_pb2.ParallelNode, path: str, scope: Scope, depth: int) -> ParallelPlan:
    children = compile_children(par.children, f"{path}.children", scope, depth, "parallel")
    join = _JOINS.get(par.join, "all")
    if join == "quorum" and not 1 <= par.quorum <= len(par.children):
        scope.violations.add(f"{path}.quorum", f"must be between 1 and the number of children ({len(par.children)})")
    return ParallelPlan(
        id=node_id,
        children=children,
        join=join,
        quorum=par.quorum,
        fail_fast=par.fail_fast,
        max_concurrency=concurrency(par.max_concurrency, f"{path}.max_concurrency", scope),
    )


@builds("map")
def compile_map(node_id: str, mp: workflow_pb2.MapNode, path: str, scope: Scope, depth: int) -> MapPlan | None:
    items = expression(mp.items, f"{path}.items", scope)
    if not mp.items:
        scope.violations.add(f"{path}.items", "a map node needs a CEL expression that yields a list")
    if not mp.HasField("body"):
        scope.violations.add(f"{path}.body", "a map node needs a body")
        return None
    with variables_in(scope, IN_MAP_BODY):
        body = compile_node(mp.body, f"{path}.body", scope, depth + 1, default_id=default_node_id(mp.body, 0))
    if items is None or body is None:
        return None
    return MapPlan(
        node_id,
        items,
        body,
        concurrency(mp.max_concurrency, f"{path}.max_concurrency", scope),
        mp.fail_fast,
        scope.max_map_items,
    )


@builds("supervise")
def compile_supervise(
    node_id: str, sup: workflow_pb2.SuperviseNode, path: str, scope: Scope, depth: int
) -> SupervisePlan:
    protocol(sup.supervisor, f"{path}.supervisor", scope)
    with variables_in(scope, IN_SUPERVISED_CHILD):
        children = compile_children(sup.children, f"{path}.children", scope, depth, "supervise")
    return SupervisePlan(
        id=node_id,
        supervisor=sup.supervisor,
        children=children,
        max_rounds=rounds(sup.max_rounds, scope.max_rounds, f"{path}.max_rounds", scope, min(3, scope.max_rounds)),
        retry=scope.default_retry,
        attempt_timeout=scope.default_attempt_timeout,
    )


@builds("adaptive")
def compile_adaptive(
    node_id: str, ada: workflow_pb2.AdaptiveNode, path: str, scope: Scope, depth: int
) -> AdaptivePlan | None:
    if ada.router:
        protocol(ada.router, f"{path}.router", scope)
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
        body = compile_node(state.node, f"{spath}.node", scope, depth + 1, default_id=state.node.id or state.name)
        transitions = []
        for j, tr in enumerate(state.transitions):
            if tr.to not in names:
                scope.violations.add(
                    f"{spath}.transitions[{j}].to", f"unknown state {tr.to!r}; states are {', '.join(names)}"
                )
            transitions.append(
                TransitionPlan(expression(tr.when, f"{spath}.transitions[{j}].when", scope, IN_TRANSITION), tr.to)
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
        max_transitions=rounds(
            ada.max_transitions, scope.max_transitions, f"{path}.max_transitions", scope, scope.max_transitions
        ),
        retry=scope.default_retry,
        attempt_timeout=scope.default_attempt_timeout,
    )


@builds("recover")
def compile_recover(
    node_id: str, rec: workflow_pb2.RecoverNode, path: str, scope: Scope, depth: int
) -> RecoverPlan | None:
    codes = frozenset(code.upper() for code in rec.codes)
    for i, code in enumerate(rec.codes):
        if code.upper() not in GRPC_CODES or code.upper() == "OK":
            scope.violations.add(f"{path}.codes[{i}]", f"{code!r} is not the name of a gRPC error code")
    parts: dict[str, PlanNode | None] = {}
    for index, part in enumerate(("body", "handler")):
        if not rec.HasField(part):
            scope.violations.add(f"{path}.{part}", f"a recover node needs a {part}")
            parts[part] = None
            continue
        child: workflow_pb2.Node = getattr(rec, part)
        with variables_in(scope, IN_HANDLER if part == "handler" else frozenset()):
            parts[part] = compile_node(child, f"{path}.{part}", scope, depth + 1, default_node_id(child, index))
    body, handler = parts["body"], parts["handler"]
    if rec.on_cancel:
        scope.cleans_up_on_cancel = True
        _refuse_suspending_clean_up(rec, path, scope)
    if body is None or handler is None:
        return None
    return RecoverPlan(node_id, body, handler, codes, rec.rethrow, rec.on_cancel)


def _refuse_suspending_clean_up(rec: workflow_pb2.RecoverNode, path: str, scope: Scope) -> None:
    """A handler that cleans up after a cancel may not wait or sleep: a cancelled task does not park."""
    if not rec.HasField("handler"):
        return
    for at, node in all_nodes(rec.handler, f"{path}.handler"):
        kind = node.WhichOneof("kind")
        if kind in ("wait", "sleep"):
            scope.violations.add(
                at, f"a {kind} node cannot be in an on_cancel handler: a cancelled task does not park to clean up"
            )
