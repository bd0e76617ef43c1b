"""Supervise nodes: the hierarchical mode.

Round r: the children run (all of them in round 1, the ones the supervisor sent back after
that, each receiving its feedback); then the supervisor protocol receives every child's
latest output, the round number and the feedback so far, and answers with a decision:
accept (optionally with the output to use), retry (which children, with what feedback) or
fail. A child may itself be a supervise node: that is a multi-tier tree.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mcp_sdk.proto import protocol_pb2
from mcp_server.engine.attempts import Call
from mcp_server.engine.context import NodeFailed, NodeResult, RunContext
from mcp_server.engine.event_types import E
from mcp_server.engine.executor import child_path, execute, runs
from mcp_server.engine.fanout import Branch, join_branches
from mcp_server.engine.payload import Payload
from mcp_server.engine.plan import PlanNode, SupervisePlan
from mcp_server.engine.step import run_auxiliary_call
from mcp_server.engine.values import as_object

VERDICTS = {
    protocol_pb2.VERDICT_ACCEPT: "accept",
    protocol_pb2.VERDICT_RETRY: "retry",
    protocol_pb2.VERDICT_FAIL: "fail",
}


@runs("supervise")
async def run_supervise(
    node: SupervisePlan, path: str, value: Payload, ctx: RunContext, scope: Mapping[str, Any]
) -> NodeResult:
    outputs: dict[str, Payload] = {}
    feedback: dict[str, str] = {}
    history: list[dict[str, Any]] = []
    to_run = list(node.children)
    for round_number in range(1, node.max_rounds + 1):
        await _run_children(to_run, path, value, round_number, feedback, outputs, ctx, scope)
        told = ctx.finished(child_path(path, "supervisor", round_number)) is not None  # by an earlier life
        decision = await _ask_supervisor(node, path, value, round_number, outputs, history, ctx)
        verdict = VERDICTS.get(decision.verdict, "none")
        if not told:
            ctx.emit(
                E.TASK_EVENT_TYPE_SUPERVISOR_DECISION,
                step_path=path,
                protocol=node.supervisor,
                attempt=round_number,
                message=f"round {round_number}: {verdict}"
                + (f" ({decision.reason or decision.feedback})" if decision.reason or decision.feedback else ""),
                data={
                    "verdict": verdict,
                    "round": round_number,
                    "retry_children": list(decision.retry_children),
                    "feedback": decision.feedback,
                    "reason": decision.reason,
                },
            )
        if verdict == "accept":
            return NodeResult(
                Payload.of_struct(decision.output) if decision.HasField("output") else Payload.object_of(outputs)
            )
        if verdict == "fail":
            reason = decision.reason or "no reason given"
            raise NodeFailed(
                "ABORTED", f"supervise {node.id}: supervisor {node.supervisor} failed round {round_number}: {reason}"
            )
        to_run, feedback = _retry_targets(node, decision)
        history.append(
            {
                "round": round_number,
                "feedback": decision.feedback,
                "children": dict(decision.child_feedback),
                "retry": [c.id for c in to_run],
            }
        )
    raise NodeFailed("ABORTED", f"supervise {node.id}: no output accepted after max_rounds={node.max_rounds} rounds")


async def _run_children(
    children: list[PlanNode],
    path: str,
    value: Payload,
    round_number: int,
    feedback: dict[str, str],
    outputs: dict[str, Payload],
    ctx: RunContext,
    scope: Mapping[str, Any],
) -> None:
    def branch(child: PlanNode) -> Branch:
        child_input = value
        child_scope = {
            **scope,
            "round": round_number,
            "feedback": feedback.get(child.id, ""),
            "children": dict(outputs),
        }
        if round_number > 1:
            previous = outputs.get(child.id)
            child_input = Payload.of_python(
                {
                    **as_object(value.python()),
                    "feedback": feedback.get(child.id, ""),
                    "round": round_number,
                    "previous_output": None if previous is None else previous.python(),
                }
            )
        return lambda: execute(child, child_path(path, child.id, round_number), child_input, ctx, child_scope)

    results = await join_branches(
        f"supervise round {round_number}",
        [branch(c) for c in children],
        required=len(children),
        fail_fast=True,
        max_concurrency=len(children),
    )
    for index, result in results.items():
        outputs[children[index].id] = result.output


async def _ask_supervisor(
    node: SupervisePlan,
    path: str,
    value: Payload,
    round_number: int,
    outputs: dict[str, Payload],
    history: list[dict[str, Any]],
    ctx: RunContext,
) -> protocol_pb2.SupervisorDecision:
    question = Payload.of_python(
        {
            "input": value.python(),
            "children": {k: v.python() for k, v in outputs.items()},
            "round": round_number,
            "history": history,
        }
    )
    call = Call(node.supervisor, question, node.retry, node.attempt_timeout)
    done = await run_auxiliary_call(call, child_path(path, "supervisor", round_number), f"supervise {node.id}", ctx)
    if (
        done.directive is None
        or done.directive.WhichOneof("kind") != "decision"
        or done.directive.decision.verdict not in VERDICTS
    ):
        raise NodeFailed(
            "FAILED_PRECONDITION",
            f"supervise {node.id}: supervisor {node.supervisor} returned no decision (accept, retry or fail)",
        )
    return done.directive.decision


def _retry_targets(
    node: SupervisePlan, decision: protocol_pb2.SupervisorDecision
) -> tuple[list[PlanNode], dict[str, str]]:
    by_id = {c.id: c for c in node.children}
    unknown = [c for c in decision.retry_children if c not in by_id]
    if unknown:
        raise NodeFailed(
            "FAILED_PRECONDITION",
            f"supervise {node.id}: supervisor asked to retry unknown children {unknown}; children are {sorted(by_id)}",
        )
    targets = [by_id[c] for c in decision.retry_children] or list(node.children)
    feedback = {c.id: decision.child_feedback.get(c.id, decision.feedback) for c in targets}
    return targets, feedback
