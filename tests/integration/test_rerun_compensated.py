"""Reruns through recover nodes, on both stores, against the testkit plugin process: what a
clean-up undid (a node with `on_cancel` or `rethrow` whose handler ran) is not kept, so its body
runs again from its start; a fallback's body is kept as before; a rerun from inside a handler
whose body failed runs the handler again on the same error, and not the body; one from inside the
clean-up of a cancel runs that clean-up again and ends CANCELLED."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from mcp_sdk.proto import task_pb2
from tests.helpers import create, error_reason, refused, seq, step, step_states, submit, violations, wait_done, workflow
from tests.integration.test_cancel_cleanup import cancel, started
from tests.integration.test_reruns import calls_of, output, rerun

pytestmark = pytest.mark.asyncio
S = task_pb2.TaskStatus
DONE = task_pb2.STEP_STATUS_COMPLETED
FAILED = task_pb2.STEP_STATUS_FAILED
SLOW = "{'ms': 10000}"
REFUSE = "{'code': 'INVALID_ARGUMENT'}"


def recover(node_id: str, body: dict[str, Any], handler: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"id": node_id, "recover": {"body": body, "handler": handler, **extra}}


def booking(confirm: dict[str, Any], handler: dict[str, Any] | None = None, **extra: Any) -> Any:
    saga = seq("saga", step("hold", "echo"), confirm, step("charge", "echo"))
    undo = handler or step("release", "echo", "{'room': input.room, 'why': error.code}")
    return workflow("booking", seq("root", step("first", "echo"), recover("r", saga, undo, **extra)))


async def test_a_redrive_after_a_cancel_cleaned_up_holds_the_room_again(parking_server, testkit):
    _, client = parking_server
    await create(client, booking(step("confirm", "sleep", SLOW), on_cancel=True))
    task = await submit(client, "booking", {"room": "204"})
    await started(client, task.task_id, "root/r/saga/confirm")
    await cancel(client, task.task_id)
    cancelled = await wait_done(client, task.task_id)
    assert step_states(cancelled)["root/r/release"].status == DONE  # the room was given back

    await create(client, booking(step("confirm", "echo"), on_cancel=True))  # confirmed at once now
    again = await rerun(client, cancelled.task_id, workflow_version=2)

    assert again.status == S.TASK_STATUS_COMPLETED and again.rerun_from_step_path == "root/r/saga/confirm"
    assert await calls_of(testkit, again.task_id) == {
        "root/r/saga/hold": 1,  # released by the clean-up: held again
        "root/r/saga/confirm": 1,
        "root/r/saga/charge": 1,
    }
    states = step_states(again)
    assert states["root/first"].reused and not states["root/r/saga/hold"].reused
    assert "root/r/release" not in states


async def test_a_rerun_from_inside_a_failed_clean_up_runs_that_clean_up_again_and_ends_cancelled(
    parking_server, testkit
):
    _, client = parking_server
    await create(
        client, booking(step("confirm", "sleep", SLOW), on_cancel=True, handler=step("release", "fail", REFUSE))
    )
    task = await submit(client, "booking", {"room": "204"})
    await started(client, task.task_id, "root/r/saga/confirm")
    await cancel(client, task.task_id, "the customer left")
    cancelled = await wait_done(client, task.task_id)
    assert cancelled.cancel_request.outcome == "failed"  # the room is still held

    await create(client, booking(step("confirm", "sleep", SLOW)))  # version 2 cleans up nowhere
    wrong = await rerun_refused(client, cancelled.task_id, from_step_path="root/r/release", workflow_version=2)
    assert wrong.code() == grpc.StatusCode.FAILED_PRECONDITION and error_reason(wrong) == "RERUN_FROM_CLEAN_UP"
    assert violations(wrong) == {"workflow_version": "does not clean up at root/r"}

    await create(client, booking(step("confirm", "sleep", SLOW), on_cancel=True))  # version 3: release mended
    again = await rerun(client, cancelled.task_id, from_step_path="root/r/release", workflow_version=3)

    assert again.status == S.TASK_STATUS_CANCELLED and again.error.message == "the customer left"
    assert again.cancel_request.reason == "the customer left" and again.cancel_request.outcome == "done"
    assert await calls_of(testkit, again.task_id) == {"root/r/release": 1}  # neither held again nor confirmed
    states = step_states(again)
    assert states["root/r/saga/hold"].reused and states["root/r/saga/confirm"].reused
    assert states["root/r/saga/confirm"].status == task_pb2.STEP_STATUS_CANCELLED
    assert states["root/r/release"].status == DONE and not states["root/r/release"].reused
    assert output(states["root/r/release"])["room"] == "204"


async def rerun_refused(client: Any, task_id: str, **fields: Any) -> grpc.aio.AioRpcError:
    return await refused(client.tasks.RerunTask(task_pb2.RerunTaskRequest(task_id=task_id, **fields)))


async def test_a_redrive_after_a_rethrowing_handler_runs_the_body_from_its_start(served, testkit):
    _, client = served
    await create(client, booking(step("confirm", "fail", REFUSE), rethrow=True))
    failed = await wait_done(client, (await submit(client, "booking", {"room": "7"})).task_id)
    assert failed.status == S.TASK_STATUS_FAILED
    assert step_states(failed)["root/r/release"].status == DONE

    await create(client, booking(step("confirm", "echo"), rethrow=True))
    again = await rerun(client, failed.task_id, workflow_version=2)

    assert again.status == S.TASK_STATUS_COMPLETED
    assert await calls_of(testkit, again.task_id) == {
        "root/r/saga/hold": 1,
        "root/r/saga/confirm": 1,
        "root/r/saga/charge": 1,
    }


async def test_a_fallbacks_body_is_kept_as_before(served, testkit):
    _, client = served
    await create(client, booking(step("confirm", "fail", REFUSE)))  # the handler stands in: no clean-up
    original = await wait_done(client, (await submit(client, "booking", {"room": "7"})).task_id)
    assert original.status == S.TASK_STATUS_COMPLETED

    await create(client, booking(step("confirm", "echo")))
    again = await rerun(client, original.task_id, from_step_path="root/r/saga/confirm", workflow_version=2)

    assert again.status == S.TASK_STATUS_COMPLETED
    assert await calls_of(testkit, again.task_id) == {"root/r/saga/confirm": 1, "root/r/saga/charge": 1}
    assert step_states(again)["root/r/saga/hold"].reused


async def test_a_rerun_from_inside_a_handler_runs_it_again_on_the_same_error_not_the_body(served, testkit):
    _, client = served
    handler = seq("undo", step("refund", "echo"), step("release", "fail", REFUSE))
    saga = seq("saga", step("hold", "echo"), step("charge", "fail", REFUSE))
    root = seq("root", recover("r", saga, handler, rethrow=True))
    await create(client, workflow("undo", root))
    failed = await wait_done(client, (await submit(client, "undo", {"room": "7"})).task_id)
    assert failed.status == S.TASK_STATUS_FAILED and step_states(failed)["root/r/undo/release"].status == FAILED

    fixed = seq("undo", step("refund", "echo"), step("release", "echo", "{'why': error.code, 'at': error.step_path}"))
    await create(client, workflow("undo", seq("root", recover("r", saga, fixed, rethrow=True))))
    again = await rerun(client, failed.task_id, from_step_path="root/r/undo/release", workflow_version=2)

    assert again.status == S.TASK_STATUS_FAILED  # rethrow: the body's error, once the handler is done
    assert "release" in failed.error.message and again.error.message.startswith("step charge failed")
    assert await calls_of(testkit, again.task_id) == {"root/r/undo/release": 1}  # neither hold nor charge again
    states = step_states(again)
    assert states["root/r/undo/release"].status == DONE and not states["root/r/undo/release"].reused
    assert states["root/r/undo/refund"].reused
    assert states["root/r/saga/charge"].status == FAILED and states["root/r/saga/charge"].reused
    assert states["root/r/saga"].status == FAILED
    assert output(states["root/r/undo/release"]) == {"why": "INVALID_ARGUMENT", "at": "root/r/saga/charge"}
