"""Which `steps` a resumed run's completed steps go back into: the task's, or the scope of the
nearest subworkflow node they are inside; a node that ran more than once keeps its last output."""

from __future__ import annotations

from mcp_sdk.proto import task_pb2
from mcp_server.engine.payload import Payload
from mcp_server.engine.restored_steps import TASK_SCOPE, outputs_by_scope

DONE, RUNNING = task_pb2.STEP_STATUS_COMPLETED, task_pb2.STEP_STATUS_RUNNING


def state(path: str, kind: str = "step", status: int = DONE) -> task_pb2.StepState:
    return task_pb2.StepState(path=path, node_id=path.rsplit("/", 1)[-1].split("#")[0], kind=kind, status=status)


def test_steps_go_to_the_scope_of_the_nearest_subworkflow_they_are_inside():
    steps = [
        (state("root", "sequence", RUNNING), None),
        (state("root/a"), Payload.of_python(1)),
        (state("root/sub", "subworkflow", RUNNING), None),
        (state("root/sub/inner", "sequence"), Payload.of_python("inner")),
        (state("root/sub/inner/a"), Payload.of_python(2)),
        (state("root/sub/inner/deeper", "subworkflow"), Payload.of_python("deeper")),
        (state("root/sub/inner/deeper/r/a"), Payload.of_python(3)),
        (state("root/loop#2/a"), Payload.of_python(4)),  # a later visit: its output wins
        (state("root/b", status=RUNNING), Payload.of_python("not yet")),
    ]
    scopes = {scope: {k: v.python() for k, v in outputs.items()} for scope, outputs in outputs_by_scope(steps).items()}
    assert scopes == {
        TASK_SCOPE: {"a": 4},
        "root/sub": {"inner": "inner", "a": 2, "deeper": "deeper"},
        "root/sub/inner/deeper": {"a": 3},
    }
