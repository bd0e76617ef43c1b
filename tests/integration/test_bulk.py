"""Rerunning or cancelling every task a filter selects (`Client.rerun_tasks`, `cancel_tasks`),
on both stores, against the testkit plugin process: each selected task is rerun once however
often the pass is made, a rerun that fails again is rerun by the next pass, and a refusal about
one task does not stop the others; every unfinished task of a label is cancelled, the others
left running."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from mcp_sdk import Client
from mcp_sdk.bulk import RerunOutcome
from mcp_sdk.proto import task_pb2
from tests.helpers import plugin_stats, seq, step, workflow
from tests.integration.test_reruns import calls_of

pytestmark = pytest.mark.asyncio
S = task_pb2.TaskStatus
FAILED = S.TASK_STATUS_FAILED


@pytest.fixture
async def api(server_factory, store_url):
    running = await server_factory(store=store_url)
    client = Client(running.address)
    yield client
    await client.close()


def broken(workflow_id: str, middle: str = "fail") -> Any:
    middle_step = step("s2", "fail", "{'code': 'INVALID_ARGUMENT'}") if middle == "fail" else step("s2", middle)
    return workflow(workflow_id, seq("root", step("s1", "append"), middle_step, step("s3", "append")))


async def ended(api: Client, task_ids: list[str]) -> list[task_pb2.Task]:
    return await asyncio.gather(*(_ended(api, task_id) for task_id in task_ids))


async def _ended(api: Client, task_id: str) -> task_pb2.Task:
    for _ in range(400):
        task = await api.get(task_id, steps=False)
        if task.status in (S.TASK_STATUS_COMPLETED, S.TASK_STATUS_FAILED, S.TASK_STATUS_CANCELLED):
            return task
        await asyncio.sleep(0.025)
    raise AssertionError(f"task {task_id} did not end")


async def submitted(api: Client, workflow_id: str, count: int, labels: dict[str, str]) -> list[str]:
    tasks = [await api.submit(workflow_id, {"text": f"{i}:"}, labels=labels) for i in range(count)]
    return [task.task_id for task in await ended(api, [t.task_id for t in tasks])]


async def bulk(api: Client, **options: Any) -> list[RerunOutcome]:
    return [outcome async for outcome in api.rerun_tasks(**options)]


async def test_each_failed_task_of_a_label_is_rerun_once_on_a_fixed_version(api, testkit):
    await api.create_workflow(broken("bulk"))
    batch = await submitted(api, "bulk", 7, {"batch": "one"})
    others = await submitted(api, "bulk", 2, {"batch": "two"})
    assert {t.status for t in await ended(api, batch + others)} == {FAILED}
    version = (await api.create_workflow(broken("bulk", middle="append"))).version

    first = await bulk(api, labels={"batch": "one"}, version=version, limit=3, concurrency=2)
    second = await bulk(api, labels={"batch": "one"}, version=version)
    third = await bulk(api, labels={"batch": "one"}, version=version)

    assert [o.created for o in first] == [True] * 3 and all(o.error is None for o in first)
    assert sorted(o.created for o in second) == [False] * 3 + [True] * 4
    assert [o.created for o in third] == [False] * 7
    reruns = {o.task_id: o.rerun.task_id for o in first + second if o.created and o.rerun is not None}
    assert sorted(reruns) == sorted(batch)  # each of the label's tasks once, none of the other label's
    assert {o.task_id: o.rerun.task_id for o in third if o.rerun is not None} == reruns  # the same reruns again
    for rerun in await ended(api, list(reruns.values())):
        assert rerun.status == S.TASK_STATUS_COMPLETED and rerun.workflow_version == version
        assert reruns[rerun.rerun_of] == rerun.task_id and rerun.rerun_from_step_path == "root/s2"
        assert await calls_of(testkit, rerun.task_id) == {"root/s2": 1, "root/s3": 1}  # s1 kept
    for task_id in others:
        assert not (await api.get(task_id)).reruns


async def test_a_rerun_that_fails_again_is_rerun_by_the_next_pass_not_by_its_own(api):
    await api.create_workflow(broken("again"))
    originals = await submitted(api, "again", 4, {"batch": "again"})

    first = await bulk(api, labels={"batch": "again"}, concurrency=1, page_size=1)
    assert [o.created for o in first] == [True] * 4  # the reruns it starts, failing too, are not selected again
    failed_reruns = [t.task_id for t in await ended(api, [o.rerun.task_id for o in first if o.rerun])]
    second = await bulk(api, labels={"batch": "again"}, page_size=3)

    by_task = {o.task_id: o for o in second}
    assert sorted(by_task) == sorted(originals + failed_reruns)
    assert all(not by_task[t].created for t in originals)  # rerun already, by the first pass
    assert all(by_task[t].created for t in failed_reruns)  # a failed rerun is a failed task of its own
    assert [t.rerun_of for t in await ended(api, [by_task[t].rerun.task_id for t in failed_reruns])] == failed_reruns


async def test_a_refusal_about_one_task_is_reported_and_the_others_go_on(api):
    await api.create_workflow(broken("has-s2"))
    await api.create_workflow(workflow("no-s2", seq("root", step("only", "fail", "{'code': 'INVALID_ARGUMENT'}"))))
    with_s2 = await submitted(api, "has-s2", 3, {"batch": "mixed"})
    without = await submitted(api, "no-s2", 2, {"batch": "mixed"})

    outcomes = {o.task_id: o for o in await bulk(api, labels={"batch": "mixed"}, from_step_path="root/s2")}

    assert sorted(outcomes) == sorted(with_s2 + without)
    assert all(outcomes[t].created and outcomes[t].error is None for t in with_s2)
    for task_id in without:
        error = outcomes[task_id].error
        assert error is not None and error.code == grpc.StatusCode.INVALID_ARGUMENT
        assert outcomes[task_id].rerun is None and "from_step_path" in {v.field for v in error.violations}


async def test_only_the_selected_statuses_and_workflow_are_rerun(api):
    await api.create_workflow(broken("picky"))
    await api.create_workflow(workflow("fine", seq("root", step("s1", "append"))))
    failed = await submitted(api, "picky", 2, {})
    completed = await submitted(api, "fine", 2, {})

    of_picky = await bulk(api, workflow_id="picky", statuses=[S.TASK_STATUS_FAILED, S.TASK_STATUS_COMPLETED])
    completed_ones = await bulk(api, statuses=["TASK_STATUS_COMPLETED"], workflow_id="fine")

    assert sorted(o.task_id for o in of_picky) == sorted(failed)
    assert sorted(o.task_id for o in completed_ones) == sorted(completed)
    assert all(o.created and o.rerun is not None and o.rerun.rerun_from_step_path == "root" for o in completed_ones)


async def test_every_unfinished_task_of_a_label_is_cancelled_and_the_rest_left(api, testkit):
    napping = workflow("napping", seq("root", step("nap", "sleep", "{'ms': 20000}")))
    await api.create_workflow(napping)
    await api.create_workflow(workflow("waiting", seq("root", {"id": "w", "wait": {"signal": "go"}})))
    runaway = [(await api.submit("napping", {}, labels={"batch": "runaway"})).task_id for _ in range(5)]
    runaway += [(await api.submit("waiting", {}, labels={"batch": "runaway"})).task_id for _ in range(3)]
    kept = [(await api.submit("napping", {}, labels={"batch": "kept"})).task_id for _ in range(2)]
    finished = (await api.submit("waiting", {}, labels={"batch": "runaway"})).task_id
    await api.signal(finished, "go", {"done": True})
    await ended(api, [finished])
    before = (await plugin_stats(testkit))["cancelled"]

    first = await bulk_cancel(api, labels={"batch": "runaway"}, reason="runaway", limit=3, concurrency=2)
    rest = await bulk_cancel(api, labels={"batch": "runaway"}, reason="runaway", page_size=2)
    again = await bulk_cancel(api, labels={"batch": "runaway"})

    assert len(first) == 3 and len(rest) == 5 and again == []  # none left unfinished, the finished one never selected
    assert sorted(o.task_id for o in first + rest) == sorted(runaway)
    assert all(o.task is not None and o.task.status == S.TASK_STATUS_CANCELLED for o in first + rest)
    for task in await ended(api, runaway):
        assert task.status == S.TASK_STATUS_CANCELLED and "runaway" in task.error.message
    assert {t.status for t in await current(api, kept)} <= {S.TASK_STATUS_PENDING, S.TASK_STATUS_RUNNING}  # left
    assert (await api.get(finished)).status == S.TASK_STATUS_COMPLETED
    assert (await plugin_stats(testkit))["cancelled"] - before >= 1  # the naps in flight were cancelled on the plugin
    await api.cancel(kept[0])
    await api.cancel(kept[1])


async def test_a_task_that_finished_before_its_cancel_is_reported_as_finished(api):
    await api.create_workflow(workflow("quick", seq("root", step("s1", "append"))))
    done = (await api.submit("quick", {"text": ""})).task_id
    await ended(api, [done])
    outcome = await api._cancel_once(done, "too late")  # what a pass meets when a task ends under it
    assert outcome.finished and outcome.task is None and outcome.error is None


async def bulk_cancel(api: Client, **options: Any) -> list[Any]:
    return [outcome async for outcome in api.cancel_tasks(**options)]


async def current(api: Client, task_ids: list[str]) -> list[task_pb2.Task]:
    return [await api.get(task_id, steps=False) for task_id in task_ids]
