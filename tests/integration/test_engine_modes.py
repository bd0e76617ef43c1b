"""The four coordination modes (and map), alone and nested, over real plugin processes."""

from __future__ import annotations

import asyncio

import pytest

from mcp_sdk.proto import task_pb2
from tests.helpers import events, plugin_stats, result, run, seq, step, step_states, workflow

pytestmark = pytest.mark.asyncio
E = task_pb2.TaskEventType
COMPLETED, FAILED = task_pb2.TASK_STATUS_COMPLETED, task_pb2.TASK_STATUS_FAILED


def par(node_id: str, *children: dict, **options: object) -> dict:
    return {"id": node_id, "parallel": {"children": list(children), **options}}


async def test_step_input_expression_builds_the_input_from_cel(client):
    wf = workflow(
        "cel-input",
        seq(
            "root",
            step("a", "echo", "{'n': input.n * 2, 'tag': 'x'}"),
            step("b", "echo", "{'sum': prev.n + steps.a.n, 'first': input.n}"),
        ),
    )
    task = await run(client, wf, {"n": 5})
    assert result(task) == {"sum": 20, "first": 5}


async def test_parallel_all_returns_every_child_output_by_id(client):
    task = await run(
        client,
        workflow(
            "p-all", par("fan", step("a", "echo", "{'v': 1}"), step("b", "echo", "{'v': 2}"), join="JOIN_POLICY_ALL")
        ),
    )
    assert result(task) == {"a": {"v": 1}, "b": {"v": 2}}


async def test_any_join_returns_the_first_and_cancels_the_losing_branches(client, testkit):
    wf = workflow(
        "p-any",
        par(
            "race",
            step("fast", "sleep", "{'ms': 50}"),
            step("slow1", "sleep", "{'ms': 5000}"),
            step("slow2", "sleep", "{'ms': 5000}"),
            join="JOIN_POLICY_ANY",
        ),
    )
    task = await run(client, wf, timeout=4)
    assert task.status == COMPLETED
    assert list(result(task)) == ["fast"]
    states = step_states(task)
    assert states["race/slow1"].status == task_pb2.STEP_STATUS_CANCELLED
    await _eventually(lambda s: s["cancelled"] == 2 and s["in_flight"] == 0, testkit)


async def test_quorum_join_needs_n_children(client, testkit):
    wf = workflow(
        "p-quorum",
        par(
            "q",
            step("a", "sleep", "{'ms': 10}"),
            step("b", "sleep", "{'ms': 30}"),
            step("c", "sleep", "{'ms': 5000}"),
            join="JOIN_POLICY_QUORUM",
            quorum=2,
        ),
    )
    task = await run(client, wf, timeout=4)
    assert sorted(result(task)) == ["a", "b"]
    await _eventually(lambda s: s["cancelled"] == 1, testkit)


async def test_fail_fast_cancels_the_other_branches(client, testkit):
    wf = workflow(
        "p-ff",
        par(
            "ff",
            step("boom", "fail", "{'code': 'INVALID_ARGUMENT'}"),
            step("slow", "sleep", "{'ms': 5000}"),
            fail_fast=True,
        ),
    )
    task = await run(client, wf, timeout=4)
    assert task.status == FAILED
    assert "boom" in task.error.message
    await _eventually(lambda s: s["cancelled"] == 1, testkit)


async def test_a_supervisor_call_cancelled_by_a_failing_sibling_is_recorded_cancelled(client):
    # The supervisor call is a step of its own; cancelling it mid-call must not leave it RUNNING.
    sup = {"id": "sup", "supervise": {"supervisor": "sleep", "children": [step("child", "echo")]}}
    wf = workflow(
        "p-ff-sup",
        par(
            "ff",
            sup,
            seq("late", step("wait", "sleep", "{'ms': 30}"), step("boom", "fail", "{'code': 'INVALID_ARGUMENT'}")),
            fail_fast=True,
        ),
    )
    task = await run(client, wf, timeout=10)
    assert task.status == FAILED
    states = step_states(task)
    assert states["ff/sup/supervisor"].status == task_pb2.STEP_STATUS_CANCELLED
    assert all(s.status != task_pb2.STEP_STATUS_RUNNING for s in task.steps)


async def test_without_fail_fast_all_branches_finish_before_the_failure(client, testkit):
    wf = workflow(
        "p-noff", par("nf", step("boom", "fail", "{'code': 'INVALID_ARGUMENT'}"), step("slow", "sleep", "{'ms': 200}"))
    )
    task = await run(client, wf)
    assert task.status == FAILED
    assert step_states(task)["nf/slow"].status == task_pb2.STEP_STATUS_COMPLETED
    assert (await plugin_stats(testkit))["cancelled"] == 0


async def test_map_over_100_items_never_exceeds_its_concurrency(client, testkit):
    wf = workflow(
        "map100",
        {
            "id": "m",
            "map": {
                "items": "input.items.map(i, {'ms': 20, 'i': i})",
                "max_concurrency": 10,
                "body": step("nap", "sleep"),
            },
        },
    )
    task = await run(client, wf, {"items": list(range(100))}, timeout=30)
    assert task.status == COMPLETED
    assert [r["i"] for r in result(task)] == list(range(100))
    stats = await plugin_stats(testkit)
    assert stats["by_protocol"]["sleep"] == 100
    assert stats["max_in_flight"] == 10


async def test_map_paths_name_each_item_and_cel_sees_item_and_index(client):
    wf = workflow(
        "map-idx",
        {"id": "m", "map": {"items": "['a', 'b', 'c']", "body": step("e", "echo", "{'item': item, 'index': index}")}},
    )
    task = await run(client, wf)
    assert result(task) == [{"item": "a", "index": 0}, {"item": "b", "index": 1}, {"item": "c", "index": 2}]
    assert {"m/e[0]", "m/e[1]", "m/e[2]"} <= set(step_states(task))


async def test_supervisor_retry_carries_feedback_into_the_retried_child(client, testkit):
    wf = workflow(
        "sup",
        {
            "id": "review",
            "supervise": {
                "supervisor": "threshold_supervisor",
                "max_rounds": 3,
                "children": [step("d1", "scored_draft"), step("d2", "echo", "{'score': 0.95}")],
            },
        },
    )
    task = await run(client, wf, {"topic": "tea"})
    assert task.status == COMPLETED
    accepted = result(task)
    assert accepted["outputs"]["d1"]["feedback_received"] == "raise the score above 0.8"
    assert accepted["outputs"]["d2"] == {"score": 0.95}
    assert accepted["round"] == 2 and accepted["score"] == 0.9
    states = step_states(task)
    assert "review/d1#2" in states and "review/d2#2" not in states  # only the weak child ran again
    decisions = [e for e in await events(client, task.task_id) if e.type == E.TASK_EVENT_TYPE_SUPERVISOR_DECISION]
    assert [e.data.fields["verdict"].string_value for e in decisions] == ["retry", "accept"]
    assert (await plugin_stats(testkit))["seen_feedback"] == ["raise the score above 0.8"]


async def test_a_retried_child_sees_its_siblings_outputs_and_round_in_cel(client):
    wf = workflow(
        "sup-cel",
        {
            "id": "s",
            "supervise": {
                "supervisor": "threshold_supervisor",
                "max_rounds": 3,
                "children": [
                    step(
                        "low",
                        "echo",
                        "{'score': round > 1 ? 0.9 : 0.1,"
                        " 'sibling': has(children.high) ? children.high.score : -1.0, 'fb': feedback}",
                    ),
                    step("high", "echo", "{'score': 1.0}"),
                ],
            },
        },
    )
    task = await run(client, wf)
    assert task.status == COMPLETED, task.error
    low = result(task)["outputs"]["low"]
    assert {k: low[k] for k in ("score", "sibling", "fb")} == {
        "score": 0.9,
        "sibling": 1,
        "fb": "raise the score above 0.8",
    }
    assert low["feedback"] == "raise the score above 0.8" and low["round"] == 2  # also merged into the step's input


async def test_a_supervisor_tree_two_levels_deep(client):
    inner = {
        "id": "team",
        "supervise": {"supervisor": "threshold_supervisor", "children": [step("writer", "scored_draft")]},
    }
    wf = workflow(
        "tree",
        {
            "id": "lead",
            "supervise": {
                "supervisor": "threshold_supervisor",
                "children": [inner, step("checker", "echo", "{'score': 1.0}")],
            },
        },
    )
    task = await run(client, wf, {"topic": "x"})
    assert task.status == COMPLETED, task.error
    states = step_states(task)
    # the team lead sent the writer back once, then passed the revised draft up; the lead accepted it
    assert {
        "lead/team/writer",
        "lead/team/supervisor",
        "lead/team/writer#2",
        "lead/team/supervisor#2",
        "lead/supervisor",
    } <= set(states)
    assert "lead/supervisor#2" not in states
    assert result(task)["outputs"]["team"]["outputs"]["writer"]["score"] == 0.9


async def test_supervisor_that_never_accepts_fails_at_max_rounds(client):
    wf = workflow(
        "sup-max",
        {
            "id": "s",
            "supervise": {
                "supervisor": "threshold_supervisor",
                "max_rounds": 2,
                "children": [step("low", "echo", "{'score': 0.1}")],
            },
        },
    )
    task = await run(client, wf)
    assert task.status == FAILED
    assert "max_rounds=2" in task.error.message


async def test_supervisor_without_a_decision_fails_cleanly(client):
    wf = workflow(
        "sup-silent", {"id": "s", "supervise": {"supervisor": "silent_supervisor", "children": [step("a", "echo")]}}
    )
    task = await run(client, wf)
    assert task.status == FAILED
    assert "returned no decision" in task.error.message


async def test_adaptive_follows_cel_transitions(client):
    states = [
        {
            "name": "count",
            "node": step("inc", "counter"),
            "transitions": [{"when": "output.n < 3", "to": "count"}, {"to": "done"}],
        },
        {"name": "done", "terminal": True, "node": step("fin", "echo")},
    ]
    task = await run(
        client, workflow("loop", {"id": "m", "adaptive": {"states": states, "max_transitions": 10}}), {"n": 0}
    )
    assert task.status == COMPLETED
    assert result(task) == {"n": 3}
    log = await events(client, task.task_id)
    assert [e.message.split(" (")[0] for e in log if e.type == E.TASK_EVENT_TYPE_TRANSITION_TAKEN] == [
        "count -> count",
        "count -> count",
        "count -> done",
    ]
    assert {"m/inc", "m/inc#2", "m/inc#3", "m/fin"} <= set(step_states(task))


async def test_an_adaptive_loop_stops_at_its_bound(client):
    states = [
        {"name": "spin", "node": step("inc", "counter"), "transitions": [{"to": "spin"}]},
        {"name": "never", "terminal": True, "node": step("fin", "echo")},
    ]
    task = await run(client, workflow("spin", {"id": "m", "adaptive": {"states": states, "max_transitions": 4}}))
    assert task.status == FAILED
    assert "max_transitions=4" in task.error.message
    assert sum(1 for s in task.steps if s.node_id == "inc") == 5


async def test_a_router_directive_picks_the_next_state(client):
    states = [
        {"name": "start", "node": step("pick", "goto", "{'next': input.where}")},
        {"name": "left", "terminal": True, "node": step("l", "echo", "{'went': 'left'}")},
        {"name": "right", "terminal": True, "node": step("r", "echo", "{'went': 'right'}")},
    ]
    wf = workflow("routed", {"id": "m", "adaptive": {"states": states, "router": "goto"}})
    assert result(await run(client, wf, {"where": "right"})) == {"went": "right"}


async def test_a_router_naming_an_unknown_state_fails_cleanly(client):
    states = [
        {"name": "start", "node": step("pick", "goto", "{'next': 'atlantis'}")},
        {"name": "end", "terminal": True, "node": step("e", "echo")},
    ]
    task = await run(client, workflow("lost", {"id": "m", "adaptive": {"states": states, "router": "goto"}}))
    assert task.status == FAILED
    assert "unknown state 'atlantis'" in task.error.message


async def test_all_modes_nested(client):
    """A parallel inside an adaptive state inside a supervise, inside a sequence with a map."""
    adaptive = {
        "id": "machine",
        "adaptive": {
            "states": [
                {
                    "name": "analyse",
                    "node": par(
                        "both", step("mood", "emotion", "{'text': input.text}"), step("n", "counter", "{'n': 1}")
                    ),
                    "transitions": [{"when": "output.mood.valence > 0.0", "to": "happy"}, {"to": "sad"}],
                },
                {"name": "happy", "terminal": True, "node": step("h", "echo", "{'score': 0.9, 'mood': 'happy'}")},
                {"name": "sad", "terminal": True, "node": step("s", "echo", "{'score': 0.9, 'mood': 'sad'}")},
            ]
        },
    }
    wf = workflow(
        "nested",
        seq(
            "root",
            {"id": "boss", "supervise": {"supervisor": "threshold_supervisor", "children": [adaptive]}},
            {"id": "each", "map": {"items": "[1, 2, 3]", "body": step("c", "counter", "{'n': item}")}},
        ),
    )
    task = await run(client, wf, {"text": "What a wonderful, happy day"})
    assert task.status == COMPLETED, task.error
    assert result(task) == [{"n": 2}, {"n": 3}, {"n": 4}]
    assert step_states(task)["root/boss/machine/h"].output.struct_value.fields["mood"].string_value == "happy"
    assert "root/boss/machine/both/mood" in step_states(task)


async def test_cel_runtime_error_fails_the_step_naming_node_and_expression(client):
    task = await run(client, workflow("cel-err", step("needs", "echo", "{'v': input.missing.deeper}")), {"x": 1})
    assert task.status == FAILED
    assert "needs" in task.error.message and "input.missing.deeper" in task.error.message


async def test_cel_type_error_fails_cleanly(client):
    task = await run(client, workflow("cel-type", step("t", "echo", "{'v': input.s + 1}")), {"s": "text"})
    assert task.status == FAILED and "input.s + 1" in task.error.message


async def test_map_whose_expression_is_not_a_list_fails_cleanly(client):
    task = await run(
        client, workflow("map-bad", {"id": "m", "map": {"items": "input.n", "body": step("e", "echo")}}), {"n": 4}
    )
    assert task.status == FAILED
    assert "not a list" in task.error.message


async def test_a_plugin_error_fails_the_step_not_the_server(client):
    task = await run(client, workflow("bad-input", step("e", "emotion")), {"not_text": 1})
    assert task.status == FAILED
    assert "INVALID_ARGUMENT" in task.error.message and "text" in task.error.message
    assert step_states(task)["e"].status == task_pb2.STEP_STATUS_FAILED


async def _eventually(predicate, testkit, timeout: float = 3.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate(await plugin_stats(testkit)):
            await asyncio.sleep(0.05)
