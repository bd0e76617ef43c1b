"""Usage summed by the composite nodes above the steps that used it (mcp_sdk.usage)."""

from __future__ import annotations

from mcp_sdk.proto import task_pb2
from mcp_sdk.usage import subtree_usage


def state(path: str, **usage: float) -> task_pb2.StepState:
    return task_pb2.StepState(path=path, usage=usage)


def test_a_node_s_usage_is_the_sum_of_the_steps_under_it_by_name():
    steps = [
        state("root"),
        state("root/research"),
        state("root/research/draft#1", prompt_tokens=100, cost=0.01),
        state("root/research/draft#2", prompt_tokens=120, cost=0.02),
        state("root/fanout"),
        state("root/fanout/label[0]", cost=0.5),
        state("root/fanout/item[1]/tag", completion_tokens=7),
        state("root/writer", cost=1.0),
    ]
    sums = subtree_usage(steps)
    assert sums["root/research"] == {"prompt_tokens": 220, "cost": 0.03}
    assert sums["root/fanout"] == {"cost": 0.5, "completion_tokens": 7}
    assert sums["root/fanout/item[1]"] == {"completion_tokens": 7}
    assert sums["root"] == {"prompt_tokens": 220, "cost": 1.53, "completion_tokens": 7}
    assert "root/writer" not in sums and "root/research/draft#1" not in sums  # a step's own usage is its own


def test_a_subtree_of_steps_that_used_nothing_has_no_sum():
    assert subtree_usage([state("root"), state("root/a"), state("root/a/b")]) == {}
