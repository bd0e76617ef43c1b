"""Which steps a rerun keeps (see RerunTask in task.proto and docs/reruns.md).

A rerun keeps, without calling anything, every step that completed in the task it reruns,
started before the chosen step (in step order, the order of ListTaskSteps) and is neither the
chosen step, inside it, nor around it; a kept composite keeps everything inside it too, since
its output stands for all of it. Everything else runs afresh.

Recover nodes bend that in two ways (`recover_cuts`). What completed in the body of a node that
cleans up (`rethrow` or `on_cancel`) whose handler began was undone by it (a room released, a
charge refunded): a rerun keeps nothing of such a node on its own, so it runs again from its start
(its handler too, should the body fail again). And
a rerun from inside a handler whose body failed (or was cancelled: a cancel's clean-up) keeps the
body as it ended, so that the handler runs again on the same error without the body running again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mcp_sdk.proto import task_pb2
from mcp_server.engine.paths import kind_and_protocol, node_at
from mcp_server.engine.plan import LEAF_KINDS, AgentPlan, PlanNode, RecoverPlan
from mcp_server.engine.ports import StepRecord

COMPLETED = task_pb2.STEP_STATUS_COMPLETED
FAILED = task_pb2.STEP_STATUS_FAILED
CANCELLED = task_pb2.STEP_STATUS_CANCELLED
PENDING = task_pb2.STEP_STATUS_PENDING
# StepState.reused = true (field 16, varint), appended: a parser merges it into the record as stored
REUSED_FLAG = b"\x80\x01\x01"


class Step:
    """One step record of the task a rerun starts from, read back (its state parsed when asked)."""

    __slots__ = ("_state", "path", "record")

    def __init__(self, record: StepRecord) -> None:
        self.record = record
        self.path = record.path
        self._state: task_pb2.StepState | None = None

    @property
    def state(self) -> task_pb2.StepState:
        if self._state is None:
            self._state = task_pb2.StepState.FromString(self.record.data)
        return self._state


def read_steps(records: Sequence[StepRecord]) -> list[Step]:
    """The records in step order."""
    return [Step(r) for r in sorted(records, key=lambda r: r.index)]


def first_unfinished(steps: Sequence[Step]) -> str | None:
    """Where a redrive starts: the first step that did not complete and holds no other step
    that did not complete (the failed step, not the sequence around it); None if every step did."""
    unfinished = [s.path for s in steps if s.state.status != COMPLETED]
    holders = {outer for path in unfinished for outer in _ancestors(path)}
    return next((path for path in unfinished if path not in holders), None)


def is_within(path: str, outer: str) -> bool:
    """Whether `path` is `outer` or a step inside it."""
    return path == outer or path.startswith(outer + "/")


@dataclass
class RecoverCuts:
    """The parts of recover nodes a rerun from a step treats apart (`recover_cuts`)."""

    undone: set[str] = field(default_factory=set)  # nodes whose clean-up ran: nothing kept on its own
    carried: set[str] = field(default_factory=set)  # failed bodies kept as they ended
    in_clean_up: str = ""  # the handler holding the chosen step, when it ran for a cancel: the rerun cleans up


def kept_steps(steps: Sequence[Step], chosen: str, cuts: RecoverCuts | None = None) -> list[Step]:
    """The steps a rerun from `chosen` keeps, in step order, with the recover nodes' `cuts`."""
    undone, carried = (cuts.undone, cuts.carried) if cuts is not None else (set(), set())
    index = next(i for i, s in enumerate(steps) if s.path == chosen)
    around, inside = _ancestors(chosen), chosen + "/"
    composites: set[str] = set()  # kept composites: all inside them is kept too
    kept = []
    for position, step in enumerate(steps):
        path = step.path
        if composites and not _ancestors(path).isdisjoint(composites):
            kept.append(step)
        elif position >= index:
            if not composites:
                break  # after the chosen step only what is inside a kept composite is kept
        elif _within_any(path, carried):
            kept.append(step)  # as it ended, failed or not
        elif (
            path not in around
            and not path.startswith(inside)
            and step.state.status == COMPLETED
            and not _within_any(path, undone)
        ):
            kept.append(step)
            if step.state.kind not in LEAF_KINDS:
                composites.add(path)
    return kept


def recover_cuts(steps: Sequence[Step], chosen: str, root: PlanNode) -> RecoverCuts:
    """How the recover nodes of the plan under `root` (the one the task ran) bend a rerun from
    `chosen`: the nodes that clean up (`rethrow` or `on_cancel`) whose handler began are undone;
    the failed or cancelled body of the node whose handler holds `chosen` is carried, and when it
    was cancelled that handler is named: it ran as a cancel's clean-up, which the rerun runs again."""
    cuts = RecoverCuts()
    candidates = [s for s in steps if b"recover" in s.record.data]  # parse only what may be one
    if not candidates:
        return cuts
    by_path = {s.path: s for s in steps}
    for step in candidates:
        if step.state.kind != "recover" or not isinstance(node := node_at(root, step.path), RecoverPlan):
            continue
        body, handler = by_path.get(f"{step.path}/{node.body.id}"), by_path.get(f"{step.path}/{node.handler.id}")
        if handler is None or handler.state.status == PENDING:
            continue
        if is_within(chosen, handler.path) and body is not None and body.state.status in (FAILED, CANCELLED):
            cuts.carried.add(body.path)
            if body.state.status == CANCELLED:
                cuts.in_clean_up = handler.path
        elif node.rethrow or node.on_cancel:
            cuts.undone.add(step.path)
    return cuts


def _within_any(path: str, outers: set[str]) -> bool:
    return any(is_within(path, outer) for outer in outers)


def _ancestors(path: str) -> set[str]:
    parts = path.split("/")
    return {"/".join(parts[:n]) for n in range(1, len(parts))}


def first_missing(root: PlanNode, kept: Sequence[Step]) -> tuple[str, str] | None:
    """The first kept step the plan under `root` has no node for, with the same kind and protocol:
    (its path, why); None when every kept step has one."""
    for step in kept:
        state = step.state
        found = kind_and_protocol(root, state.path)
        if found is None:
            return state.path, "the workflow version has no node at this path"
        kind, protocol = found
        if kind != state.kind:
            return state.path, f"it is a {kind} in the workflow version, a {state.kind} in the task"
        if protocol != state.protocol:
            return state.path, f"it calls {protocol!r} in the workflow version, {state.protocol!r} in the task"
    return None


def first_changed_agent(ran: PlanNode, runs: PlanNode, kept: Sequence[Step]) -> tuple[str, str] | None:
    """The first agent node holding a kept step whose tools (names, parameters) differ between the
    plan the task ran under `ran` and the one the rerun runs under `runs`: (its path, why); None
    when none does. Which path a call runs at follows from which earlier calls ran, and that from
    the tools: with other tools a kept call could stand for another."""
    seen: set[str] = set()
    for step in kept:
        parts = step.path.split("/")
        for depth in range(1, len(parts)):
            outer = "/".join(parts[:depth])
            if outer in seen:
                continue
            seen.add(outer)
            before = node_at(ran, outer)
            if isinstance(before, AgentPlan) and _tools(before) != _tools(node_at(runs, outer)):
                return outer, "its tools (names or parameters) differ, so its kept calls could stand for others"
    return None


def _tools(node: PlanNode | None) -> list[tuple[str, Any]]:
    return [(t.name, t.parameters) for t in node.tools] if isinstance(node, AgentPlan) else []


def rerun_records(steps: Sequence[Step], kept: Sequence[Step], chosen: str, root: PlanNode) -> list[StepRecord]:
    """The records a rerun starts with, numbered from 0 in step order: the kept steps, marked
    reused, and the composites around the chosen step (those the plan under `root` has), PENDING,
    so that they keep their place before what is inside them."""
    around = _ancestors(chosen)
    composites = [s for s in steps if s.path in around]
    records: list[StepRecord] = []
    for step in sorted([*kept, *composites], key=lambda s: s.record.index):
        state = step.state
        if step.path not in around:
            data = step.record.data if state.reused else step.record.data + REUSED_FLAG
        elif kind_and_protocol(root, step.path) == (state.kind, state.protocol):
            data = task_pb2.StepState(
                path=state.path,
                node_id=state.node_id,
                kind=state.kind,
                protocol=state.protocol,
                status=task_pb2.STEP_STATUS_PENDING,
            ).SerializeToString()
        else:
            continue
        records.append(StepRecord(len(records), step.path, data))
    return records
