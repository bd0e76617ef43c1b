"""Pure pieces of the engine: compiling definitions, CEL, values, backoff. No server needed."""

from __future__ import annotations

import pytest
from google.protobuf import json_format

from mcp_sdk.proto import workflow_pb2
from mcp_server.engine.attempts import backoff
from mcp_server.engine.cel import ExpressionError, compile_expression
from mcp_server.engine.compiler import compile_workflow
from mcp_server.engine.plan import AdaptivePlan, ParallelPlan, RetryPolicy, SequencePlan, StepPlan
from mcp_server.engine.values import as_object, normalize, python_to_value, value_to_python
from mcp_server.errors import InvalidArgument
from mcp_server.settings import Limits


def wf(root: dict, **extra: object) -> workflow_pb2.Workflow:
    return json_format.ParseDict({"workflow_id": "w", "root": root, **extra}, workflow_pb2.Workflow())


def test_compiles_defaults_into_every_step():
    plan = compile_workflow(
        wf(
            {
                "id": "r",
                "sequence": {"children": [{"step": {"protocol": "a"}}, {"step": {"protocol": "b", "timeout": "2s"}}]},
            },
            defaults={"retry": {"max_attempts": 5}, "step_timeout": "9s", "task_timeout": "60s"},
        ),
        Limits(),
    )
    assert isinstance(plan.root, SequencePlan)
    first, second = plan.root.children
    assert isinstance(first, StepPlan) and first.id == "a" and first.retry.max_attempts == 5 and first.timeout == 9.0
    assert isinstance(second, StepPlan) and second.timeout == 2.0
    assert plan.task_timeout == 60.0 and plan.node_count == 3 and plan.depth == 2


def test_reports_every_violation_at_once():
    with pytest.raises(InvalidArgument) as err:
        compile_workflow(
            wf(
                {
                    "id": "r",
                    "parallel": {
                        "join": "JOIN_POLICY_QUORUM",
                        "quorum": 5,
                        "children": [
                            {"id": "x", "step": {"protocol": ""}},
                            {"id": "x", "step": {"protocol": "p", "input": "1 +"}},
                        ],
                    },
                }
            ),
            Limits(),
        )
    fields = {v.field for v in err.value.violations}
    assert fields == {
        "workflow.root.parallel.quorum",
        "workflow.root.parallel.children[0].step.protocol",
        "workflow.root.parallel.children[1].id",
        "workflow.root.parallel.children[1].step.input",
    }


def test_unknown_protocols_are_checked_only_when_the_registry_is_given():
    definition = wf({"step": {"protocol": "ghost"}})
    assert compile_workflow(definition, Limits()).protocols == {"ghost"}
    with pytest.raises(InvalidArgument):
        compile_workflow(definition, Limits(), known_protocols={"real"})


def test_adaptive_needs_a_terminal_state_and_known_targets():
    states = [{"name": "a", "node": {"step": {"protocol": "p"}}, "transitions": [{"to": "a"}]}]
    with pytest.raises(InvalidArgument) as err:
        compile_workflow(wf({"id": "m", "adaptive": {"states": states}}), Limits())
    assert any("terminal" in v.description for v in err.value.violations)
    states.append({"name": "end", "terminal": True, "node": {"id": "e", "step": {"protocol": "p"}}})
    plan = compile_workflow(wf({"id": "m", "adaptive": {"states": states}}), Limits())
    assert (
        isinstance(plan.root, AdaptivePlan)
        and plan.root.initial_state == "a"
        and plan.root.max_transitions == Limits().max_transitions
    )


def test_workflow_limits_may_only_tighten_server_limits():
    with pytest.raises(InvalidArgument) as err:
        compile_workflow(wf({"step": {"protocol": "p"}}, limits={"max_nodes": 10**6}), Limits())
    assert err.value.violations[0].field == "workflow.limits.max_nodes"


def test_expression_length_is_limited():
    with pytest.raises(InvalidArgument) as err:
        compile_workflow(
            wf({"step": {"protocol": "p", "input": "1 + " * 1000 + "1"}}), Limits(max_expression_length=100)
        )
    assert "limit is 100" in err.value.violations[0].description


def test_parallel_join_sizes():
    children = [{"step": {"protocol": "a"}}, {"step": {"protocol": "b"}}]
    plan = compile_workflow(wf({"id": "r", "parallel": {"join": "JOIN_POLICY_ANY", "children": children}}), Limits())
    assert isinstance(plan.root, ParallelPlan) and plan.root.required == 1


def test_cel_sees_whole_json_numbers_as_ints():
    assert compile_expression("input.count + 1").evaluate({"input": normalize({"count": 2.0})}) == 3
    assert compile_expression("input.score >= 0.5").evaluate({"input": {"score": 0.75}}) is True
    assert compile_expression("[1, 2, 3].map(x, x * 2)").evaluate({}) == [2, 4, 6]


def test_cel_errors_name_the_expression():
    with pytest.raises(ExpressionError, match="Syntax error"):
        compile_expression("input.")
    with pytest.raises(ExpressionError) as err:
        compile_expression("input.a.b").evaluate({"input": {}})
    assert "'a'" in str(err.value) and "input.a.b" in str(err.value)


def test_values_round_trip_through_protobuf():
    value = {"a": [1, 2.5, "x", None, True], "b": {"c": {}}}
    assert value_to_python(python_to_value(value)) == value
    assert as_object([1, 2]) == {"value": [1, 2]} and as_object(None) == {} and as_object({"k": 1}) == {"k": 1}


def test_backoff_grows_by_the_multiplier_and_stops_at_the_maximum():
    policy = RetryPolicy(initial_backoff=0.1, max_backoff=1.0, multiplier=2.0, jitter=0.0)
    assert [round(backoff(policy, n), 3) for n in (1, 2, 3, 4, 5)] == [0.1, 0.2, 0.4, 0.8, 1.0]
    jittered = RetryPolicy(initial_backoff=1.0, jitter=0.5)
    assert all(0.5 <= backoff(jittered, 1) <= 1.5 for _ in range(100))


@pytest.mark.parametrize(
    ("source", "most"),
    [
        ("input.xs.map(a, a + 1).size()", 1000),  # the evaluator's map copies its list per item
        ("input.xs.filter(a, a > 0).size()", 1000),
        ("input.xs.exists(a, input.xs.exists(b, b == a + 1))", 1000),
        ("input.xs.map(a, input.xs.map(b, b)).size()", 100),
        ("input.xs.exists(a, a < 0)", 1_000_000),
        (" + ".join(["input.xs"] * 20), 5540),  # each + copies what the chain built: 19**2 / 2
        ("'items: ' + string(input.xs.size()) + ' of ' + string(input.n)", 222_222),
    ],
)
def test_an_evaluation_past_the_cost_budget_is_refused_before_it_starts(source, most):
    """CEL's evaluator holds the event loop (and the GIL) while it runs, and builds a map's or a
    filter's list, and a chain of +, in time quadratic in the items (a map of 10,000 items: ~3 s;
    a map in a map of 1,000: ~66 s; 200 copies of a 100,000-item list: 75 s): what an expression
    with comprehensions or a chain of + reads is bounded by MCP_LIMIT_MAX_CEL_COST."""
    expression = compile_expression(source, Limits(), frozenset({"input"}))
    expression.evaluate({"input": {"xs": list(range(most)), "n": 5, "other": list(range(2_000_000))}})
    with pytest.raises(ExpressionError, match=f"reads more than {most:,} items"):
        expression.evaluate({"input": {"xs": list(range(most + 1)), "n": 5}})
    with pytest.raises(ExpressionError, match="MCP_LIMIT_MAX_CEL_COST"):  # text counts, a KB an item
        expression.evaluate({"input": {"xs": ["x" * 1024 * (most + 1)], "n": 5}})


def test_a_value_named_many_times_is_copied_as_many_times_and_is_bounded_so():
    """`[input.xs, input.xs, ...]` copies the list into its result once per name (100 copies of
    100,000 items took 1 GB and 1.4 s): the extra copies are held to MCP_LIMIT_MAX_CEL_COST items."""
    hundred = compile_expression("[" + ", ".join(["input.xs"] * 100) + "]")
    assert len(hundred.evaluate({"input": {"xs": list(range(10_101))}})) == 100  # 99 copies of 10,101
    with pytest.raises(ExpressionError, match=r"names input\.xs 100 times"):
        hundred.evaluate({"input": {"xs": list(range(10_102))}})
    twice = compile_expression("{'a': input.xs, 'b': input.xs}")
    assert len(twice.evaluate({"input": {"xs": list(range(1_000_000))}})["b"]) == 1_000_000


def test_a_budget_of_zero_turns_the_estimate_off():
    unbounded = compile_expression("input.xs.map(a, a + 1).size()", Limits(max_cel_cost=0), frozenset({"input"}))
    assert unbounded.cost is None and unbounded.evaluate({"input": {"xs": list(range(2000))}}) == 2000


def test_an_expression_that_is_linear_in_what_it_reads_is_not_estimated():
    for source in ("input.xs.size()", "{'all': input, 'next': input.n + 1}", "input.a + input.b + 1"):
        assert compile_expression(source).cost is None
    assert compile_expression("input.xs.size()").evaluate({"input": {"xs": list(range(2_000_000))}}) == 2_000_000
    whole = compile_expression("{'all': input, 'n': input.n + 1}")
    assert whole.evaluate({"input": {"xs": list(range(2_000_000)), "n": 1}})["n"] == 2


def test_nested_comprehensions_are_limited_to_bound_evaluation_cost():
    nested = "input.a.map(x, input.a.map(y, input.a.map(z, input.a.filter(w, w > x + y + z))))"
    with pytest.raises(InvalidArgument) as err:
        compile_workflow(wf({"step": {"protocol": "p", "input": nested}}), Limits())
    assert "4 comprehensions" in err.value.violations[0].description
    assert compile_workflow(wf({"step": {"protocol": "p", "input": "input.a.map(x, x * 2)"}}), Limits())
    keyed = wf({"step": {"protocol": "p"}})
    keyed.concurrency.key = nested  # every expression of a workflow is held to it, this one too
    keyed.concurrency.max_running = 1
    with pytest.raises(InvalidArgument) as key_err:
        compile_workflow(keyed, Limits())
    assert "4 comprehensions" in key_err.value.violations[0].description
