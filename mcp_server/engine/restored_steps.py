"""The `steps` a resumed run starts with: what each step that completed in an earlier life of
the run (or that a rerun kept) gave, by the scope whose CEL `steps` holds it. A run replays its
tree from the root, and a node that finished before is not entered again, so without this the
steps inside it (a parallel's branches, a supervised draft) would be missing from `steps` for
every node after it."""

from __future__ import annotations

from collections.abc import Iterable

from mcp_sdk.proto import task_pb2
from mcp_server.engine.payload import Payload

TASK_SCOPE = ""  # the task's own `steps`; a subworkflow node's scope is named by its path


def outputs_by_scope(steps: Iterable[tuple[task_pb2.StepState, Payload | None]]) -> dict[str, dict[str, Payload]]:
    """{scope: {node id: output}} of the completed steps among `steps` (in the order they began:
    a node that ran more than once keeps its last output). A step belongs to the scope of the
    nearest subworkflow node it is inside, else to the task's."""
    listed = list(steps)
    subworkflows = {state.path for state, _ in listed if state.kind == "subworkflow"}
    scopes: dict[str, dict[str, Payload]] = {}
    for state, output in listed:
        if state.status == task_pb2.STEP_STATUS_COMPLETED and output is not None:
            scopes.setdefault(_scope_of(state.path, subworkflows), {})[state.node_id] = output
    return scopes


def _scope_of(path: str, subworkflows: set[str]) -> str:
    cut = path.rfind("/")
    while cut > 0:
        if (ancestor := path[:cut]) in subworkflows:
            return ancestor
        cut = path.rfind("/", 0, cut)
    return TASK_SCOPE
