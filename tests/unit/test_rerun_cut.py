"""The keep rule of a rerun (engine/reruns.py), on step records as a run writes them."""

from __future__ import annotations

from mcp_sdk.proto import task_pb2
from mcp_server.engine.compiler import compile_workflow
from mcp_server.engine.ports import StepRecord
from mcp_server.engine.reruns import (
    Step,
    first_missing,
    first_unfinished,
    kept_steps,
    read_steps,
    recover_cuts,
    rerun_records,
)
from mcp_server.settings import Limits
from tests.helpers import seq, step, workflow

DONE, FAILED, CANCELLED = task_pb2.STEP_STATUS_COMPLETED, task_pb2.STEP_STATUS_FAILED, task_pb2.STEP_STATUS_CANCELLED


def steps(*rows: tuple[str, int, str, str]) -> list[Step]:
    """(path, status, kind, protocol) rows, in step order."""
    records = [
        StepRecord(
            i, path, task_pb2.StepState(path=path, status=status, kind=kind, protocol=protocol).SerializeToString()
        )
        for i, (path, status, kind, protocol) in enumerate(rows)
    ]
    return read_steps(list(reversed(records)))  # read back in index order, however they come


BRANCHES = steps(
    ("root", FAILED, "sequence", ""),
    ("root/prep", DONE, "step", "echo"),
    ("root/par", FAILED, "parallel", ""),
    ("root/par/a", DONE, "sequence", ""),
    ("root/par/b", FAILED, "sequence", ""),
    ("root/par/a/a1", DONE, "step", "echo"),
    ("root/par/b/b1", FAILED, "step", "fail"),
    ("root/par/a/a2", DONE, "step", "echo"),  # started after b1: kept all the same, inside kept `a`
    ("root/end", CANCELLED, "step", "echo"),
)


def paths(found: list[Step]) -> list[str]:
    return [s.path for s in found]


def test_a_redrive_starts_at_the_first_step_that_did_not_complete_and_holds_none():
    assert first_unfinished(BRANCHES) == "root/par/b/b1"
    assert first_unfinished(steps(("root", DONE, "sequence", ""))) is None


def test_a_kept_branch_keeps_all_inside_it_and_nothing_around_the_cut_is_kept():
    kept = kept_steps(BRANCHES, "root/par/b/b1")
    assert paths(kept) == ["root/prep", "root/par/a", "root/par/a/a1", "root/par/a/a2"]
    assert paths(kept_steps(BRANCHES, "root/par/b")) == paths(kept)
    assert paths(kept_steps(BRANCHES, "root/prep")) == []
    assert paths(kept_steps(BRANCHES, "root/par/a/a1")) == ["root/prep"]  # b started after a: not kept


def test_records_keep_the_original_order_with_the_composites_around_the_cut_pending():
    plan = compile_workflow(
        workflow(
            "w",
            {
                "id": "root",
                "sequence": {
                    "children": [
                        step("prep", "echo"),
                        {
                            "id": "par",
                            "parallel": {
                                "children": [
                                    {"id": "a", "sequence": {"children": [step("a1", "echo"), step("a2", "echo")]}},
                                    {"id": "b", "sequence": {"children": [step("b1", "fail")]}},
                                ]
                            },
                        },
                        step("end", "echo"),
                    ]
                },
            },
        ),
        Limits(),
    )
    kept = kept_steps(BRANCHES, "root/par/b/b1")
    records = rerun_records(BRANCHES, kept, "root/par/b/b1", plan.root)
    assert [(r.index, r.path) for r in records] == list(
        enumerate(["root", "root/prep", "root/par", "root/par/a", "root/par/b", "root/par/a/a1", "root/par/a/a2"])
    )
    states = {r.path: task_pb2.StepState.FromString(r.data) for r in records}
    assert all(states[p].reused for p in paths(kept))
    assert {p for p, s in states.items() if s.status == task_pb2.STEP_STATUS_PENDING} == {
        "root",
        "root/par",
        "root/par/b",
    }
    assert first_missing(plan.root, kept) is None


def test_a_version_must_have_every_kept_step_with_its_kind_and_protocol():
    renamed = compile_workflow(
        workflow("w", {"id": "root", "sequence": {"children": [step("other", "echo")]}}), Limits()
    )
    kept = kept_steps(BRANCHES, "root/par/b/b1")
    assert first_missing(renamed.root, kept) == ("root/prep", "the workflow version has no node at this path")
    swapped = compile_workflow(
        workflow("w", {"id": "root", "sequence": {"children": [step("prep", "stamp")]}}), Limits()
    )
    path, why = first_missing(swapped.root, kept) or ("", "")
    assert path == "root/prep" and "'stamp'" in why


def recover(node_id: str, body: dict, handler: dict, **extra: object) -> dict:
    return {"id": node_id, "recover": {"body": body, "handler": handler, **extra}}


def test_what_a_clean_up_undid_is_kept_only_inside_a_kept_composite():
    inner = recover("in", seq("ib", step("i1", "echo"), step("i2", "fail")), step("iu", "echo"), rethrow=True)
    outer = recover("out", seq("ob", step("o1", "echo"), inner), step("ou", "echo"), on_cancel=True)
    fallback = recover("fb", seq("fbb", step("f1", "echo"), step("f2", "fail")), step("fh", "echo"))
    root = {"id": "root", "parallel": {"children": [outer, fallback, seq("b", step("b1", "fail"))]}}
    plan = compile_workflow(workflow("w", root), Limits())
    ran = steps(
        ("root", FAILED, "parallel", ""),
        ("root/out", FAILED, "recover", ""),
        ("root/fb", DONE, "recover", ""),
        ("root/b", FAILED, "sequence", ""),
        ("root/out/ob", FAILED, "sequence", ""),
        ("root/fb/fbb", FAILED, "sequence", ""),
        ("root/out/ob/o1", DONE, "step", "echo"),
        ("root/fb/fbb/f1", DONE, "step", "echo"),
        ("root/out/ob/in", FAILED, "recover", ""),
        ("root/fb/fbb/f2", FAILED, "step", "fail"),
        ("root/fb/fh", DONE, "step", "echo"),
        ("root/out/ob/in/ib", FAILED, "sequence", ""),
        ("root/out/ob/in/ib/i1", DONE, "step", "echo"),
        ("root/out/ob/in/ib/i2", FAILED, "step", "fail"),
        ("root/out/ob/in/iu", DONE, "step", "echo"),
        ("root/out/ou", DONE, "step", "echo"),
        ("root/b/b1", FAILED, "step", "fail"),
    )
    # both clean-ups ran: nothing of either body on its own; the fallback stood in, whole
    assert paths(kept_steps(ran, "root/b/b1", recover_cuts(ran, "root/b/b1", plan.root))) == [
        "root/fb",
        "root/fb/fbb",
        "root/fb/fbb/f1",
        "root/fb/fbb/f2",
        "root/fb/fh",
    ]
    assert paths(kept_steps(ran, "root/out/ob/in/ib/i2", recover_cuts(ran, "root/out/ob/in/ib/i2", plan.root))) == [
        "root/fb",
        "root/fb/fbb",
        "root/fb/fbb/f1",
        "root/fb/fbb/f2",
        "root/fb/fh",
    ]
    assert "root/out/ob/o1" in paths(kept_steps(ran, "root/b/b1"))  # without the plan: the old rule
    # from inside the outer handler: its body as it ended, then the handler again
    assert paths(kept_steps(ran, "root/out/ou", recover_cuts(ran, "root/out/ou", plan.root)))[:9] == [
        "root/fb",
        "root/out/ob",
        "root/fb/fbb",
        "root/out/ob/o1",
        "root/fb/fbb/f1",
        "root/out/ob/in",
        "root/fb/fbb/f2",
        "root/fb/fh",
        "root/out/ob/in/ib",
    ]
    assert {"root/out/ob/in/ib/i2", "root/out/ob/in/iu"} <= set(
        paths(kept_steps(ran, "root/out/ou", recover_cuts(ran, "root/out/ou", plan.root)))
    )
