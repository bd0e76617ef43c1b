"""Adaptive nodes: a state machine whose transitions depend on the outputs so far.

After a state's node runs, the next state is, in order of precedence: the `next_state`
directive its protocol returned; the router protocol's answer, if the node has a router;
the first transition whose CEL condition holds (`output` is the state's output). Each
state's output is the next state's input; the machine's output is the terminal state's.
`max_transitions` bounds every loop.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from mcp_server.engine.attempts import Call
from mcp_server.engine.context import NodeFailed, NodeResult, RunContext
from mcp_server.engine.event_types import E
from mcp_server.engine.executor import child_path, evaluate, execute, runs
from mcp_server.engine.payload import Payload
from mcp_server.engine.plan import AdaptivePlan, StatePlan
from mcp_server.engine.step import run_auxiliary_call


@runs("adaptive")
async def run_adaptive(
    node: AdaptivePlan, path: str, value: Payload, ctx: RunContext, scope: Mapping[str, Any]
) -> NodeResult:
    visits: Counter[str] = Counter()
    state = node.states[node.initial_state]
    current = value
    transitions = 0
    while True:
        visits[state.name] += 1
        result = await execute(state.node, child_path(path, state.node.id, visits[state.name]), current, ctx, scope)
        if state.terminal:
            return NodeResult(result.output)
        target, reason = await _next_state(node, state, path, transitions + 1, current, result, ctx, scope)
        if target not in node.states:
            raise NodeFailed(
                "FAILED_PRECONDITION",
                f"adaptive {node.id}: {reason} named unknown state {target!r}; states are {sorted(node.states)}",
            )
        transitions += 1
        if transitions > node.max_transitions:
            raise NodeFailed(
                "RESOURCE_EXHAUSTED",
                f"adaptive {node.id}: exceeded max_transitions={node.max_transitions} (last: {state.name} -> {target})",
            )
        following = node.states[target]
        if not ctx.began(child_path(path, following.node.id, visits[target] + 1)):  # else told by an earlier life
            ctx.emit(
                E.TASK_EVENT_TYPE_TRANSITION_TAKEN,
                step_path=path,
                attempt=transitions,
                flush_soon=True,
                message=f"{state.name} -> {target} ({reason})",
                data={"from": state.name, "to": target, "reason": reason},
            )
        state = following
        current = result.output


async def _next_state(
    node: AdaptivePlan,
    state: StatePlan,
    path: str,
    number: int,
    current: Payload,
    result: NodeResult,
    ctx: RunContext,
    scope: Mapping[str, Any],
) -> tuple[str, str]:
    if result.directive is not None and result.directive.WhichOneof("kind") == "next_state":
        return result.directive.next_state, "directive"
    if node.router:
        return await _ask_router(node, state, path, number, current, result, ctx), f"router {node.router}"
    for index, transition in enumerate(state.transitions):
        if transition.when is None:
            return transition.to, "default"
        holds = evaluate(
            transition.when,
            ctx,
            current,
            scope,
            node.id,
            f"transition {state.name}[{index}]",
            extra={"output": result.output},
        )
        if not isinstance(holds, bool):
            raise NodeFailed(
                "INVALID_ARGUMENT",
                f"node {node.id}: transition condition `{transition.when.source}`"
                f" yielded {type(holds).__name__}, not bool",
            )
        if holds:
            return transition.to, f"when {transition.when.source}"
    raise NodeFailed("FAILED_PRECONDITION", f"adaptive {node.id}: no transition from state {state.name} matched")


async def _ask_router(
    node: AdaptivePlan, state: StatePlan, path: str, number: int, current: Payload, result: NodeResult, ctx: RunContext
) -> str:
    assert node.router is not None
    question = Payload.of_python(
        {
            "state": state.name,
            "output": result.output.python(),
            "input": current.python(),
            "states": sorted(node.states),
        }
    )
    call = Call(node.router, question, node.retry, node.attempt_timeout)
    done = await run_auxiliary_call(call, child_path(path, "router", number), f"adaptive {node.id}", ctx)
    if done.directive is not None and done.directive.WhichOneof("kind") == "next_state":
        return done.directive.next_state
    answer = done.output.python()
    if isinstance(answer, dict) and isinstance(answer.get("next_state"), str):
        return str(answer["next_state"])
    raise NodeFailed("FAILED_PRECONDITION", f"adaptive {node.id}: router {node.router} named no next state")
