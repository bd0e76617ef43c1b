"""A step's and a task's usage keep a bounded number of names, however many calls name new ones."""

from __future__ import annotations

from typing import Any

from mcp_sdk.proto import task_pb2
from mcp_server.engine.context import USAGE_NAMES_LEFT_OUT, RunContext
from mcp_server.engine.payload import Payload
from mcp_server.engine.records import RunStep
from mcp_server.settings import Limits


def context(most: int) -> RunContext:
    nothing: Any = None  # add_usage touches neither the store nor the caller
    ctx = RunContext(
        task_pb2.Task(task_id="t1"),
        nothing,
        nothing,
        1,
        Payload.object_of({}),
        limits=Limits(max_usage_names_per_task=most),
    )
    for index, path in enumerate(("root/a", "root/b")):
        ctx._steps[path] = RunStep(index, task_pb2.StepState(path=path))
    return ctx


def test_attempts_of_one_step_naming_new_names_stop_at_the_limit_and_count_the_rest():
    ctx = context(100)
    for attempt in range(10):  # up to 100 attempts (and fallbacks) each may report 64 new names
        ctx.add_usage("root/a", {f"a{attempt}_{k}": 1.0 for k in range(64)} | {"tokens": 2.0})
    step = ctx.state("root/a").usage
    assert len(step) == 101 and step["tokens"] == 20.0  # a name it has goes on adding
    assert step[USAGE_NAMES_LEFT_OUT] == 640 - 99
    assert len(ctx.task.usage) == 101 and ctx.task.usage[USAGE_NAMES_LEFT_OUT] == 640 - 99


def test_the_task_total_has_its_own_limit_across_steps():
    ctx = context(64)
    ctx.add_usage("root/a", {f"a{k}": 1.0 for k in range(64)})
    ctx.add_usage("root/b", {f"b{k}": 1.0 for k in range(64)})
    assert len(ctx.state("root/b").usage) == 64 and USAGE_NAMES_LEFT_OUT not in ctx.state("root/b").usage
    assert len(ctx.task.usage) == 65 and ctx.task.usage[USAGE_NAMES_LEFT_OUT] == 64
