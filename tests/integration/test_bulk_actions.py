"""Bulk actions on both stores, through the public contract: cancel or rerun every task a filter
(or a list of ids) names, in the background; each task acted on once, even when two replicas work
on one page; tasks made after the start (the action's own reruns among them) left alone; aborts,
limits, refusals, and an action that goes on after its server stops."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import grpc
import pytest

from mcp_sdk.client import Client as SdkClient
from mcp_sdk.client import task_selection
from mcp_sdk.proto import bulk_pb2, task_pb2
from mcp_server.bulk.worker import AT_ONCE
from mcp_server.engine.ports import BulkRecord
from mcp_server.settings import Limits
from tests.conftest import client_for
from tests.helpers import (
    bearer,
    bulk_action_ended,
    create,
    error_reason,
    failed_tasks,
    principals_file,
    refused,
    step,
    submit,
    violations,
    wait_done,
    workflow,
)

pytestmark = pytest.mark.asyncio
S = task_pb2.TaskStatus
B = bulk_pb2
CANCEL, RERUN, DELETE = B.BULK_ACTION_KIND_CANCEL, B.BULK_ACTION_KIND_RERUN, B.BULK_ACTION_KIND_DELETE


@pytest.fixture
async def served(server_factory, store_url):
    running = await server_factory(store=store_url, limits=Limits(max_tasks_in_flight=2))
    client = client_for(running)
    yield running, client
    await client.channel.close()


async def start(client, kind: int, **selection) -> B.BulkAction:
    request = B.StartBulkActionRequest(kind=kind, selection=B.TaskSelection(**selection))
    return await client.bulk_actions.StartBulkAction(request)


async def ended(client, action_id: str, timeout: float = 30) -> B.BulkAction:
    return await bulk_action_ended(client, action_id, timeout)


async def listed(client, **request) -> list[task_pb2.Task]:
    found, token = [], ""
    while True:
        page = await client.tasks.ListTasks(task_pb2.ListTasksRequest(page_size=500, page_token=token, **request))
        found += page.tasks
        token = page.next_page_token
        if not token:
            return found


async def status_of(client, task_id: str) -> int:
    return (await client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=task_id))).task.status


async def test_a_filter_cancels_every_unfinished_task_of_a_workflow_and_leaves_the_rest(served):
    _, client = served
    tag = uuid.uuid4().hex[:8]
    await create(client, workflow(f"slow-{tag}", step("s", "sleep", "{'ms': 20000}")))
    await create(client, workflow(f"other-{tag}", step("s", "sleep", "{'ms': 20000}")))
    slow = [(await submit(client, f"slow-{tag}")).task_id for _ in range(25)]  # 2 run, 23 wait in the queue
    other = (await submit(client, f"other-{tag}")).task_id
    action = await start(
        client, CANCEL, workflow_id=f"slow-{tag}", statuses=[S.TASK_STATUS_PENDING, S.TASK_STATUS_RUNNING]
    )
    assert action.state == B.BULK_ACTION_STATE_RUNNING and action.selection.HasField("created_before")
    done = await ended(client, action.action_id)
    assert (done.state, done.matched, done.succeeded, done.skipped, done.failed) == (
        B.BULK_ACTION_STATE_DONE,
        25,
        25,
        0,
        0,
    )
    for task_id in slow:
        task = await wait_done(client, task_id)
        assert task.status == S.TASK_STATUS_CANCELLED and f"bulk action {action.action_id}" in task.error.message
    assert await status_of(client, other) in (S.TASK_STATUS_PENDING, S.TASK_STATUS_RUNNING)
    later = (await submit(client, f"slow-{tag}")).task_id  # after the action: not in it
    await asyncio.sleep(0.3)
    assert await status_of(client, later) != S.TASK_STATUS_CANCELLED
    await client.tasks.CancelTask(task_pb2.CancelTaskRequest(task_id=other))
    await client.tasks.CancelTask(task_pb2.CancelTaskRequest(task_id=later))


async def test_failed_tasks_are_rerun_once_each_labelled_and_the_reruns_are_not_rerun(served):
    _, client = served
    tag = uuid.uuid4().hex[:8]
    failed = await failed_tasks(client, f"failing-{tag}", 12)
    await create(client, workflow(f"fine-{tag}", step("e", "echo")))
    fine = (await submit(client, f"fine-{tag}")).task_id
    await wait_done(client, fine)
    action = await start(client, RERUN, statuses=[S.TASK_STATUS_FAILED], labels={}, workflow_id=f"failing-{tag}")
    done = await ended(client, action.action_id)
    assert (done.matched, done.succeeded, done.failed) == (12, 12, 0)
    reruns = await listed(client, labels={"mcp/bulk-action": action.action_id})
    assert sorted(t.rerun_of for t in reruns) == sorted(failed)  # one each, none of `fine`, none of a rerun
    metrics = served[0].orchestrator.metrics.registry
    assert metrics.get_sample_value("mcp_bulk_action_tasks_total", {"kind": "rerun", "outcome": "succeeded"}) == 12
    assert len(await listed(client, workflow_id=f"failing-{tag}")) == 24
    for task in reruns:
        await wait_done(client, task.task_id)


async def test_two_replicas_working_one_page_rerun_each_task_once(served, store_url):
    running, client = served
    tag = uuid.uuid4().hex[:8]
    failed = await failed_tasks(client, f"twice-{tag}", 30)
    action = await start(client, RERUN, task_ids=failed)
    store = running.orchestrator.store.bulk_actions
    record = await store.get_bulk_action(action.action_id)
    assert isinstance(record, BulkRecord)
    worker = running.orchestrator.bulk_worker
    # the server's own worker and two more holding the same version (one whose lease passed to the other)
    await asyncio.gather(worker.work(record), worker.work(record))
    done = await ended(client, action.action_id)
    reruns = await listed(client, labels={"mcp/bulk-action": action.action_id})
    assert sorted(t.rerun_of for t in reruns) == sorted(failed)
    assert done.state == B.BULK_ACTION_STATE_DONE and done.matched == 30


async def test_ids_are_acted_on_as_named_and_what_is_not_there_or_not_theirs_is_skipped(
    server_factory, store_url, tmp_path
):
    auth = principals_file(tmp_path, {"ann": [], "bob": [], "root": ["admin"]})
    running = await server_factory(store=store_url, auth_file=auth, limits=Limits(max_tasks_in_flight=1))
    client = client_for(running)
    tag = uuid.uuid4().hex[:8]
    await create_as(client, workflow(f"nap-{tag}", step("s", "sleep", "{'ms': 20000}")))
    ann = [await submit_as(client, f"nap-{tag}", "ann") for _ in range(3)]
    bobs = await submit_as(client, f"nap-{tag}", "bob")
    request = B.StartBulkActionRequest(
        kind=CANCEL, selection=B.TaskSelection(task_ids=[*ann, bobs, "no-such-task", ann[0]]), reason="tidy"
    )
    action = await client.bulk_actions.StartBulkAction(request, metadata=bearer("ann"))
    assert list(action.selection.task_ids) == [*ann, bobs, "no-such-task"]  # a repeat once
    get = B.GetBulkActionRequest(action_id=action.action_id)
    async with asyncio.timeout(30):
        while (
            done := await client.bulk_actions.GetBulkAction(get, metadata=bearer("ann"))
        ).state == B.BULK_ACTION_STATE_RUNNING:
            await asyncio.sleep(0.05)
    assert (done.matched, done.succeeded, done.skipped) == (5, 3, 2)
    error = await refused(client.bulk_actions.GetBulkAction(get, metadata=bearer("bob")))
    assert error.code() == grpc.StatusCode.NOT_FOUND and error_reason(error) == "BULK_ACTION_NOT_FOUND"
    assert [
        a.action_id
        for a in (
            await client.bulk_actions.ListBulkActions(B.ListBulkActionsRequest(), metadata=bearer("bob"))
        ).bulk_actions
    ] == []
    admin_list = await client.bulk_actions.ListBulkActions(B.ListBulkActionsRequest(), metadata=bearer("root"))
    assert action.action_id in [a.action_id for a in admin_list.bulk_actions]
    status = (await client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=bobs), metadata=bearer("bob"))).task.status
    assert status != S.TASK_STATUS_CANCELLED
    mine = B.StartBulkActionRequest(
        kind=CANCEL, selection=B.TaskSelection(owner="bob", statuses=[S.TASK_STATUS_PENDING])
    )
    error = await refused(client.bulk_actions.StartBulkAction(mine, metadata=bearer("ann")))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "selection.owner" in violations(error)
    await client.tasks.CancelTask(task_pb2.CancelTaskRequest(task_id=bobs), metadata=bearer("bob"))
    await client.channel.close()


async def create_as(client, wf) -> None:
    from mcp_sdk.proto import workflow_pb2

    await client.workflows.CreateWorkflow(workflow_pb2.CreateWorkflowRequest(workflow=wf), metadata=bearer("root"))


async def submit_as(client, workflow_id: str, name: str) -> str:
    request = task_pb2.SubmitTaskRequest(workflow_id=workflow_id)
    return (await client.tasks.SubmitTask(request, metadata=bearer(name))).task.task_id


async def test_an_abort_stops_a_rate_limited_rerun_and_the_running_limit_refuses_more(server_factory, store_url):
    running = await server_factory(store=store_url, limits=Limits(submissions_per_second=2), bulk_max_running=1)
    client = client_for(running)
    tag = uuid.uuid4().hex[:8]
    failed = await failed_tasks(client, f"slowly-{tag}", 8)
    action = await start(client, RERUN, task_ids=failed)
    again = await refused(start(client, CANCEL, task_ids=failed))
    assert again.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and error_reason(again) == "BULK_ACTIONS_RUNNING"
    await asyncio.sleep(1.2)
    aborted = await client.bulk_actions.AbortBulkAction(
        B.AbortBulkActionRequest(action_id=action.action_id, reason="enough")
    )
    assert (
        aborted.state == B.BULK_ACTION_STATE_ABORTED
        and aborted.abort_reason == "enough"
        and aborted.HasField("end_time")
    )
    await asyncio.sleep(1.5)
    after = await client.bulk_actions.GetBulkAction(B.GetBulkActionRequest(action_id=action.action_id))
    reruns = await listed(client, labels={"mcp/bulk-action": action.action_id})
    assert after.state == B.BULK_ACTION_STATE_ABORTED and 0 < len(reruns) < 8
    assert len(reruns) <= after.succeeded + AT_ONCE  # those in hand when the abort came may have gone
    await asyncio.sleep(1.0)
    assert len(await listed(client, labels={"mcp/bulk-action": action.action_id})) == len(reruns)  # nothing more
    second = await start(client, CANCEL, task_ids=failed)  # room again: the first ended
    assert (await ended(client, second.action_id)).skipped == 8  # all finished: nothing to cancel
    await client.channel.close()


async def test_an_action_goes_on_after_its_server_stops(server_factory, store_url, tmp_path):
    url = f"sqlite:///{tmp_path}/bulk.db" if store_url.startswith("sqlite") else store_url
    first = await server_factory(store=url, limits=Limits(submissions_per_second=4))
    client = client_for(first)
    tag = uuid.uuid4().hex[:8]
    failed = await failed_tasks(client, f"carry-{tag}", 10)
    action = await start(client, RERUN, workflow_id=f"carry-{tag}", statuses=[S.TASK_STATUS_FAILED])
    await asyncio.sleep(0.6)
    await client.channel.close()
    await first.stop(0.5)
    second = await server_factory(store=url, limits=Limits(submissions_per_second=4))
    client = client_for(second)
    done = await ended(client, action.action_id, timeout=40)
    reruns = await listed(client, labels={"mcp/bulk-action": action.action_id})
    assert done.state == B.BULK_ACTION_STATE_DONE and sorted(t.rerun_of for t in reruns) == sorted(failed)
    await client.channel.close()


async def test_refusals_name_the_field(served):
    _, client = served
    cases = {
        "kind": B.StartBulkActionRequest(selection=B.TaskSelection(task_ids=["a"])),
        "selection": B.StartBulkActionRequest(kind=CANCEL, selection=B.TaskSelection(task_ids=["a"], workflow_id="w")),
        "selection.task_ids[1]": B.StartBulkActionRequest(
            kind=CANCEL, selection=B.TaskSelection(task_ids=["a", "b c"])
        ),
        "from_step_path": B.StartBulkActionRequest(
            kind=DELETE, from_step_path="root/s2", selection=B.TaskSelection(task_ids=["a"])
        ),
        "workflow_version": B.StartBulkActionRequest(
            kind=CANCEL, workflow_version=2, selection=B.TaskSelection(task_ids=["a"])
        ),
    }
    cases["selection.statuses[1]"] = B.StartBulkActionRequest(
        kind=CANCEL, selection=B.TaskSelection(statuses=[S.TASK_STATUS_PENDING, S.TASK_STATUS_UNSPECIFIED])
    )
    cases["selection.statuses[0]"] = B.StartBulkActionRequest(kind=CANCEL, selection=B.TaskSelection(statuses=[99]))
    empty = B.StartBulkActionRequest(kind=CANCEL, selection=B.TaskSelection(labels={}))
    empty.selection.SetInParent()
    cases["selection "] = empty
    backwards = B.StartBulkActionRequest(kind=RERUN, selection=B.TaskSelection(workflow_id="w"))
    backwards.selection.created_after.FromDatetime(dt.datetime(2026, 1, 2))
    backwards.selection.created_before.FromDatetime(dt.datetime(2026, 1, 1))
    cases["selection.created_before"] = backwards
    for field, request in cases.items():
        error = await refused(client.bulk_actions.StartBulkAction(request))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert field.strip() in violations(error), (field, violations(error))
    missing = await refused(client.bulk_actions.GetBulkAction(B.GetBulkActionRequest(action_id="ba-nope")))
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    token = await refused(client.bulk_actions.ListBulkActions(B.ListBulkActionsRequest(page_token="not a token!")))
    assert token.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_repeated_start_gets_the_same_action(served):
    _, client = served
    request = B.StartBulkActionRequest(kind=CANCEL, selection=B.TaskSelection(task_ids=["x1"]), request_id="once")
    first = await client.bulk_actions.StartBulkAction(request)
    second = await client.bulk_actions.StartBulkAction(request)
    assert first.action_id == second.action_id
    assert (await ended(client, first.action_id)).skipped == 1
    assert (await client.bulk_actions.StartBulkAction(request)).action_id == first.action_id  # after its end too
    other = B.StartBulkActionRequest(kind=RERUN, selection=B.TaskSelection(task_ids=["x1"]), request_id="once")
    error = await refused(client.bulk_actions.StartBulkAction(other))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS and error_reason(error) == "REQUEST_ID_REUSED"
    by_filter = B.StartBulkActionRequest(kind=CANCEL, selection=B.TaskSelection(workflow_id="w"), request_id="filtered")
    first = await client.bulk_actions.StartBulkAction(by_filter)
    await asyncio.sleep(0.01)
    assert (await client.bulk_actions.StartBulkAction(by_filter)).action_id == first.action_id  # its own start time


async def test_the_sdk_starts_waits_for_and_lists_an_action_and_lists_tasks_by_creation_time(served):
    running, client = served
    tag = uuid.uuid4().hex[:8]
    await create(client, workflow(f"sdk-{tag}", step("e", "echo")))
    async with SdkClient(running.address) as sdk:
        early = [(await sdk.submit(f"sdk-{tag}", {"n": i})).task_id for i in range(3)]
        await asyncio.sleep(0.05)
        middle = dt.datetime.now(dt.UTC)
        await asyncio.sleep(0.05)
        late = [(await sdk.submit(f"sdk-{tag}", {"n": i})).task_id for i in range(2)]
        for task_id in [*early, *late]:
            await sdk.result(task_id)
        after = await sdk.list_tasks(workflow_id=f"sdk-{tag}", created_after=middle)
        assert [t.task_id for t in after.tasks] == list(reversed(late)) and after.total_size == 2
        before = await sdk.list_tasks(workflow_id=f"sdk-{tag}", created_before=middle)
        assert [t.task_id for t in before.tasks] == list(reversed(early)) and before.total_size == 3
        selection = task_selection(workflow_id=f"sdk-{tag}", created_after=middle)
        action = await sdk.start_bulk_action("rerun", selection, request_id=f"sdk-{tag}")
        done = await sdk.wait_bulk_action(action.action_id, timeout=30)
        assert (done.state, done.succeeded) == (B.BULK_ACTION_STATE_DONE, 2)
        assert done.selection.created_after == selection.created_after
        assert action.action_id in [a.action_id for a in (await sdk.list_bulk_actions()).bulk_actions]
        reruns = await sdk.list_tasks(labels={"mcp/bulk-action": action.action_id})
        assert sorted(t.rerun_of for t in reruns.tasks) == sorted(late)


async def test_list_tasks_refuses_a_status_that_is_none_on_every_store(served):
    """UNSPECIFIED matched every task on Redis (its index of all tasks) and none on SQLite."""
    _, client = served
    for statuses in ([S.TASK_STATUS_UNSPECIFIED], [S.TASK_STATUS_FAILED, 42]):
        error = await refused(client.tasks.ListTasks(task_pb2.ListTasksRequest(statuses=statuses)))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"statuses[{len(statuses) - 1}]" in violations(error)


async def test_finished_tasks_are_deleted_with_what_they_hold_and_unfinished_ones_skipped(served):
    _, client = served
    tag = uuid.uuid4().hex[:8]
    await create(client, workflow(f"done-{tag}", step("e", "echo")))
    await create(client, workflow(f"nap-{tag}", step("s", "sleep", "{'ms': 20000}")))
    finished = [(await submit(client, f"done-{tag}", labels={"t": tag})).task_id for _ in range(6)]
    for task_id in finished:
        await wait_done(client, task_id)
    napping = (await submit(client, f"nap-{tag}", labels={"t": tag})).task_id
    action = await start(client, DELETE, labels={"t": tag})
    done = await ended(client, action.action_id)
    assert (done.matched, done.succeeded, done.skipped) == (7, 6, 1)
    for task_id in finished:
        error = await refused(client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=task_id)))
        assert error.code() == grpc.StatusCode.NOT_FOUND
    assert await status_of(client, napping) in (S.TASK_STATUS_PENDING, S.TASK_STATUS_RUNNING)
    await client.tasks.CancelTask(task_pb2.CancelTaskRequest(task_id=napping))


async def test_reruns_from_a_named_step_keep_what_came_before_it(served):
    _, client = served
    tag = uuid.uuid4().hex[:8]
    steps = [step(f"s{i}", "append") for i in (1, 2, 3)]
    await create(client, workflow(f"three-{tag}", {"id": "root", "sequence": {"children": steps}}))
    made = [(await submit(client, f"three-{tag}", {"text": ">"})).task_id for _ in range(3)]
    for task_id in made:
        await wait_done(client, task_id)
    request = B.StartBulkActionRequest(
        kind=RERUN, from_step_path="root/s3", selection=B.TaskSelection(workflow_id=f"three-{tag}")
    )
    action = await client.bulk_actions.StartBulkAction(request)
    assert action.from_step_path == "root/s3"
    done = await ended(client, action.action_id)
    assert (done.matched, done.succeeded) == (3, 3)
    for rerun in await listed(client, labels={"mcp/bulk-action": action.action_id}):
        finished = await wait_done(client, rerun.task_id)
        assert finished.rerun_from_step_path == "root/s3" and finished.status == S.TASK_STATUS_COMPLETED
    missing = B.StartBulkActionRequest(
        kind=RERUN, from_step_path="root/nowhere", selection=B.TaskSelection(task_ids=made[:1])
    )
    failed = await ended(client, (await client.bulk_actions.StartBulkAction(missing)).action_id)
    assert failed.failed == 1 and failed.failures[0].task_id == made[0] and "root/nowhere" in failed.failures[0].message
