"""Which subworkflow nodes an upgrade moves, and in which order workflows are upgraded: each after
the workflows it runs, so one pass carries a fix through every level; cycles end."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format

from mcp_sdk.proto import workflow_pb2
from mcp_sdk.workflow_methods import SubworkflowMove, moved, outdated_nodes, upgrade_order


def runs(workflow_id: str, *pinned: tuple[str, int], version: int = 1) -> workflow_pb2.Workflow:
    nodes: list[dict[str, Any]] = [
        {"id": f"s{i}", "subworkflow": {"workflow_id": w, "version": v, "definition": {"workflow_id": w}}}
        for i, (w, v) in enumerate(pinned)
    ]
    root = {"id": "r", "sequence": {"children": nodes or [{"step": {"protocol": "echo"}}]}}
    return json_format.ParseDict(
        {"workflow_id": workflow_id, "version": version, "root": root}, workflow_pb2.Workflow()
    )


def test_a_workflow_comes_after_every_workflow_it_runs_at_any_depth():
    stored = {
        "app": runs("app", ("mid", 1), ("leaf", 1)),
        "mid": runs("mid", ("leaf", 1)),
        "leaf": runs("leaf"),
        "other": runs("other"),
    }
    assert upgrade_order(stored, set(stored)) == ["leaf", "mid", "app", "other"]
    assert upgrade_order(stored, {"app", "leaf"}) == ["leaf", "app"]  # mid ordered, not chosen


def test_a_cycle_is_cut_and_every_chosen_workflow_comes_once():
    stored = {"a": runs("a", ("b", 1)), "b": runs("b", ("a", 1)), "c": runs("c", ("c", 1))}
    order = upgrade_order(stored, set(stored))
    assert sorted(order) == ["a", "b", "c"] and order.index("b") < order.index("a")


def test_only_older_pins_move_never_a_workflow_s_own_and_only_the_wanted():
    parent = runs("p", ("x", 1), ("y", 3), ("p", 1), ("gone", 1), version=2)
    latest = {"x": 2, "y": 3, "p": 2}
    assert outdated_nodes(parent, latest, set()) == (SubworkflowMove("workflow.root.sequence.children[0]", "x", 1, 2),)
    assert outdated_nodes(parent, latest, {"y"}) == ()


def test_the_copy_to_create_names_new_versions_and_carries_no_definitions():
    parent = runs("p", ("x", 1), ("y", 3), version=4)
    copy = moved(parent, [SubworkflowMove("workflow.root.sequence.children[0]", "x", 1, 2)])
    subs = [c.subworkflow for c in copy.root.sequence.children]
    assert [(s.workflow_id, s.version, s.HasField("definition")) for s in subs] == [("x", 2, False), ("y", 3, False)]
    assert copy.version == 0 and parent.root.sequence.children[0].subworkflow.version == 1  # the original unchanged
