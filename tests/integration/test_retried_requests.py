"""A retry of a submission or a rerun (the same request_id, its reply lost) gets the task its first
send made even when a check it passed then refuses it now: the workflow deleted since, a stricter
version, the rerun's source deleted. Exactly once, whatever changed between the sends."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from mcp_sdk.proto import task_pb2, workflow_pb2
from tests.conftest import client_for
from tests.helpers import create, error_reason, refused, step, wait_done, workflow

pytestmark = pytest.mark.asyncio
S = task_pb2


@pytest.fixture
async def served(server_factory, store_url):
    running = await server_factory(store=store_url)
    client = client_for(running)
    yield client
    await client.channel.close()


def request(workflow_id: str, request_id: str, **data: Any) -> task_pb2.SubmitTaskRequest:
    sent = task_pb2.SubmitTaskRequest(workflow_id=workflow_id, request_id=request_id)
    sent.input_data.update(data or {"who": "ada"})
    return sent


async def delete_workflow(client: Any, workflow_id: str) -> None:
    await client.workflows.DeleteWorkflow(workflow_pb2.DeleteWorkflowRequest(workflow_id=workflow_id))


async def test_a_retry_after_its_workflow_was_deleted_gets_its_task_on_every_submitting_call(served):
    client = served
    await create(client, workflow("going", step("say", "echo")))
    first = (await client.tasks.SubmitTask(request("going", "once"))).task
    done = await wait_done(client, first.task_id)
    await delete_workflow(client, "going")

    again = await client.tasks.SubmitTask(request("going", "once"))
    assert (again.task.task_id, again.created) == (first.task_id, False)
    ran = await client.tasks.RunTask(request("going", "once"))
    assert (ran.task.task_id, ran.created, ran.task.status) == (first.task_id, False, done.status)
    replies = [reply async for reply in client.tasks.SubmitAndWatchTask(request("going", "once"))]
    assert replies[0].submitted.task.task_id == first.task_id and not replies[0].submitted.created
    streamed = [event.type for reply in replies for event in reply.events]
    assert streamed[0] == S.TASK_EVENT_TYPE_QUEUED and streamed[-1] == S.TASK_EVENT_TYPE_COMPLETED

    # a request that made nothing is refused as before; another request under the id is not a retry
    error = await refused(client.tasks.SubmitTask(request("going", "never")))
    assert (error.code(), error_reason(error)) == (grpc.StatusCode.NOT_FOUND, "WORKFLOW_NOT_FOUND")
    error = await refused(client.tasks.SubmitTask(request("going", "once", who="grace")))
    assert (error.code(), error_reason(error)) == (grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED")


async def test_a_retry_of_a_keyed_task_finds_it_where_the_store_placed_it(served):
    """A task under a concurrency key is placed in its key's partition (on Redis, an id of its
    own): the retry finds it there."""
    client = served
    keyed = workflow("keyed", step("say", "echo"), concurrency={"key": "input.who", "max_running": 1})
    await create(client, keyed)
    first = (await client.tasks.SubmitTask(request("keyed", "placed"))).task
    await wait_done(client, first.task_id)
    strict = {"type": "object", "properties": {"who": {"type": "integer"}}}  # the input fits no more
    await create(client, workflow("keyed", step("say", "echo"), input_schema=strict))
    again = await client.tasks.SubmitTask(request("keyed", "placed"))
    assert (again.task.task_id, again.created) == (first.task_id, False)
    assert error_reason(await refused(client.tasks.SubmitTask(request("keyed", "fresh")))) == "INPUT_REJECTED"


async def test_a_retried_rerun_gets_its_task_after_its_source_was_deleted(served):
    client = served
    await create(client, workflow("again", {"id": "root", "sequence": {"children": [step("a", "echo")]}}))
    source = (await client.tasks.SubmitTask(request("again", "source"))).task
    await wait_done(client, source.task_id)
    rerun = task_pb2.RerunTaskRequest(task_id=source.task_id, from_step_path="root/a", request_id="redo")
    first = await client.tasks.RerunTask(rerun)
    assert first.created
    await wait_done(client, first.task.task_id)
    await client.tasks.DeleteTask(task_pb2.DeleteTaskRequest(task_id=source.task_id))

    again = await client.tasks.RerunTask(rerun)
    assert (again.task.task_id, again.created, again.task.rerun_of) == (first.task.task_id, False, source.task_id)
    fresh = task_pb2.RerunTaskRequest(task_id=source.task_id, from_step_path="root/a", request_id="redo-2")
    assert (await refused(client.tasks.RerunTask(fresh))).code() == grpc.StatusCode.NOT_FOUND
    changed = task_pb2.RerunTaskRequest(task_id=source.task_id, request_id="redo")  # another request, same id
    assert error_reason(await refused(client.tasks.RerunTask(changed))) == "REQUEST_ID_REUSED"


async def test_a_rerun_retry_and_a_submission_with_the_same_request_id_stay_apart(served):
    """A rerun's request_id names reruns only: a submission's retry under it is not the rerun."""
    client = served
    await create(client, workflow("apart", step("say", "echo")))
    source = (await client.tasks.SubmitTask(request("apart", "shared"))).task
    await wait_done(client, source.task_id)
    rerun = await client.tasks.RerunTask(task_pb2.RerunTaskRequest(task_id=source.task_id, request_id="shared"))
    assert rerun.created and rerun.task.task_id != source.task_id
    await delete_workflow(client, "apart")
    again = await client.tasks.SubmitTask(request("apart", "shared"))
    assert (again.task.task_id, again.created) == (source.task_id, False)
