"""Usage as plugins report it (ExecuteResponse.usage), on both stores, with the testkit plugin
process: summed per step over retries and fallbacks, per task, in events and metrics; a rerun's
reused steps are not counted again."""

from __future__ import annotations

import pytest

from mcp_sdk.proto import task_pb2
from tests.conftest import Client
from tests.helpers import create, run, step, step_states, workflow

pytestmark = pytest.mark.asyncio
USED = "{'prompt_tokens': 10, 'completion_tokens': 5, 'cost': 0.25}"


async def full(client: Client, task_id: str) -> task_pb2.Task:
    return (await client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=task_id))).task


async def test_usage_is_summed_per_step_and_per_task_and_counted_by_protocol_and_owner(served):
    running, client = served
    children = [step(f"s{i}", "metered", f"{{'n': {i}, 'usage': {USED}}}") for i in range(3)]
    wf = workflow("metered-chain", {"id": "root", "sequence": {"children": children}})
    task = await run(client, wf)
    assert task.status == task_pb2.TASK_STATUS_COMPLETED, task.error
    assert dict(task.usage) == {"prompt_tokens": 30, "completion_tokens": 15, "cost": 0.75}
    states = step_states(await full(client, task.task_id))
    for i in range(3):
        assert dict(states[f"root/s{i}"].usage) == {"prompt_tokens": 10, "completion_tokens": 5, "cost": 0.25}
    assert not states["root"].usage  # a composite calls nothing itself
    ended = [
        e
        async for e in client.tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=task.task_id))
        if e.type == task_pb2.TASK_EVENT_TYPE_STEP_COMPLETED and e.protocol
    ]
    assert all(e.data.fields["usage"].struct_value.fields["prompt_tokens"].number_value == 10 for e in ended)
    sample = running.orchestrator.metrics.registry.get_sample_value(
        "mcp_usage_total", {"protocol": "metered", "owner": "", "name": "completion_tokens"}
    )
    assert sample == 15


async def test_usage_a_plugin_should_not_report_fails_its_call_and_counts_nothing(served):
    """Usage is summed into the step, the task and a Prometheus counter: a negative amount failed
    the whole task with an internal error (the counter refused it inside the event), NaN would
    poison the counter for good, and a name of any length or with newlines became a metric label. Such an answer
    now fails its call, naming what is wrong; the fallback is tried; nothing is counted."""
    running, client = served
    bad = [("{'tokens': -5}", "usage tokens = -5.0"), ("{'a\\nb': 1}", "the usage name 'a\\nb'")]
    for index, (usage, said) in enumerate(bad):
        metered = {"protocol": "metered", "input": f"{{'usage': {usage}}}", "fallbacks": [{"protocol": "echo"}]}
        task = await run(client, workflow(f"bad-usage-{index}", {"id": "s", "step": metered}))
        assert task.status == task_pb2.TASK_STATUS_COMPLETED, task.error.message  # by its fallback
        state = step_states(await full(client, task.task_id))["s"]
        assert state.fallback_protocol == "echo" and not task.usage and not state.usage
        log = [e async for e in client.tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=task.task_id))]
        fell = [e.data.fields["error"].string_value for e in log if e.type == task_pb2.TASK_EVENT_TYPE_FALLBACK_USED]
        assert len(fell) == 1 and said in fell[0], (said, fell)
    nan = workflow("nan-usage", step("s", "metered", "{'usage': {'tokens': double('NaN')}}"))
    task = await run(client, nan)
    assert task.status == task_pb2.TASK_STATUS_FAILED and "an amount is a finite number" in task.error.message
    assert "internal" not in task.error.message
    counted = running.orchestrator.metrics.registry.get_sample_value(
        "mcp_usage_total", {"protocol": "metered", "owner": "", "name": "tokens"}
    )
    assert counted is None  # nothing reached the counter
    ok = await run(client, workflow("fine-usage", step("s", "metered", f"{{'usage': {USED}}}")))
    assert dict(ok.usage) == {"prompt_tokens": 10, "completion_tokens": 5, "cost": 0.25}


async def test_failed_attempts_use_nothing_and_a_fallback_counts_once(served):
    _, client = served
    retried = step(
        "again", "metered", f"{{'failures': 2, 'usage': {USED}}}", retry={"max_attempts": 3, "initial_backoff": "0.01s"}
    )
    fallen = {
        "id": "fallen",
        "step": {
            "protocol": "fail",
            "input": "{'code': 'UNAVAILABLE'}",
            "fallbacks": [{"protocol": "metered", "input": f"{{'usage': {USED}}}"}],
        },
    }
    task = await run(client, workflow("metered-retries", {"id": "root", "sequence": {"children": [retried, fallen]}}))
    assert task.status == task_pb2.TASK_STATUS_COMPLETED, task.error
    states = step_states(await full(client, task.task_id))
    assert states["root/again"].attempts == 3 and dict(states["root/again"].usage)["prompt_tokens"] == 10
    assert dict(states["root/fallen"].usage)["cost"] == 0.25
    assert dict(task.usage) == {"prompt_tokens": 20, "completion_tokens": 10, "cost": 0.5}


async def test_a_rerun_does_not_count_the_steps_it_reuses(served):
    _, client = served
    children = [step(f"s{i}", "metered", f"{{'usage': {USED}}}") for i in range(3)]
    await create(client, workflow("metered-rerun", {"id": "root", "sequence": {"children": children}}))
    first = await run(client, workflow("metered-rerun", {"id": "root", "sequence": {"children": children}}))
    rerun = (
        await client.tasks.RerunTask(task_pb2.RerunTaskRequest(task_id=first.task_id, from_step_path="root/s2"))
    ).task
    async for _ in client.tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=rerun.task_id)):
        pass
    again = await full(client, rerun.task_id)
    assert again.status == task_pb2.TASK_STATUS_COMPLETED
    assert dict(again.usage) == {"prompt_tokens": 10, "completion_tokens": 5, "cost": 0.25}
    states = step_states(again)
    assert states["root/s0"].reused and dict(states["root/s0"].usage)["prompt_tokens"] == 10


async def test_a_task_totals_a_bounded_number_of_usage_names(served):
    """Each call may report 64 names; a plugin naming new ones in every call grew the task's total
    without bound (the header every checkpoint rewrites and every view of the task sends). Past
    MCP_LIMIT_MAX_USAGE_NAMES_PER_TASK (256) names, amounts stay in their steps and are counted."""
    _, client = served
    steps = []
    for s in range(10):
        used = "{" + ", ".join(f"'n{s}_{k}': 1" for k in range(64)) + "}"
        steps.append(step(f"s{s}", "metered", f"{{'usage': {used}}}"))
    task = await run(client, workflow("many-names", {"id": "root", "sequence": {"children": steps}}))
    assert task.status == task_pb2.TASK_STATUS_COMPLETED
    task = await full(client, task.task_id)
    assert len(task.usage) == 257 and task.usage["usage_names_left_out"] == 640 - 256
    assert all(task.usage[f"n{s}_{k}"] == 1 for s in range(4) for k in range(64))
    states = step_states(task)
    assert all(len(states[f"root/s{s}"].usage) == 64 for s in range(10))  # every step keeps its own
