"""What the steps under a node used: a task's step usage summed by the composite nodes above them
(the cost of a research subtree, of an agent's loop, of a subworkflow), from the step states a
client already has."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from mcp_sdk.proto import task_pb2


def subtree_usage(steps: Iterable[task_pb2.StepState]) -> dict[str, dict[str, float]]:
    """For each path with steps under it that used something (`root/research` for
    `root/research/draft#2`, `root/fanout` and `root/fanout/label[3]` for a step in a map item's
    body), the sum of their usage by name. Only the steps given count: a task whose steps go on
    in ListTaskSteps pages sums what those pages hold."""
    sums: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for step in steps:
        if not step.usage:
            continue
        parts = step.path.split("/")
        for end in range(1, len(parts)):
            above = sums["/".join(parts[:end])]
            for name, amount in step.usage.items():
                above[name] += amount
    return {path: dict(used) for path, used in sums.items()}
