"""Bulk actions in the console, in a real browser: "all, in the background" on the task list
starts one for the list's filter (cancel asks first, and a "no" starts nothing), the bulk actions
page shows its progress and links to the reruns, and aborts a running one."""

from __future__ import annotations

import asyncio
import contextlib
import time

from playwright.async_api import expect

from mcp_sdk import Client, TaskFailed
from mcp_sdk.proto import bulk_pb2, task_pb2
from mcp_server.engine.ports import BulkRecord
from mcp_server.service.bulk import new_action_id
from tests.console.conftest import screenshot
from tests.console.test_console_reruns import failing_middle


async def until(check, timeout: float = 15) -> None:
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.05)


async def test_a_person_reruns_every_failed_task_in_the_background_and_finds_the_reruns(console, api: Client, page):
    await api.create_workflow(failing_middle("console-all", "fail"))
    made = [await api.submit("console-all", {"text": ">"}, labels={"batch": "all"}) for _ in range(4)]
    for task in made:
        with contextlib.suppress(TaskFailed):
            await api.result(task.task_id)
    version = (await api.create_workflow(failing_middle("console-all", "append"))).version

    await page.goto(f"{console.console.url}/tasks?status=failed&label=batch%3Dall")
    form = page.locator("#bulk-rerun")
    await form.locator('input[name="version"]').fill(str(version))
    async with page.expect_navigation():
        await page.locator("#rerun-all").click()
    assert "/bulk" in page.url
    action_id = page.url.rsplit("#", 1)[-1]
    row = page.locator(f'#bulk-table tr[data-action-id="{action_id}"]')
    await expect(row).to_contain_text(f"rerun on version {version}")
    await expect(row).to_contain_text("failed, batch=all")

    async def done() -> bool:
        return (await api.get_bulk_action(action_id)).state == bulk_pb2.BULK_ACTION_STATE_DONE

    await until(done)
    await page.reload()
    await expect(row.locator(".counts")).to_contain_text("4 rerun")
    await screenshot(page, "bulk-actions")
    async with page.expect_navigation():
        await row.get_by_role("link", name="the reruns").click()
    await expect(page.locator("#task-table tbody tr")).to_have_count(4)
    for task in made:
        reruns = list((await api.get(task.task_id)).reruns)
        assert len(reruns) == 1
        assert await api.result(reruns[0]) == {"text": ">s1s2", "trail": ["root/s1", "root/s2"]}
    assert not page.problems  # type: ignore[attr-defined]


async def test_a_person_cancels_all_waiting_tasks_in_the_background_after_saying_yes(console, api: Client, page):
    waits = {"id": "root", "sequence": {"children": [{"id": "w", "wait": {"signal": "go"}}]}}
    await api.create_workflow({"workflow_id": "console-cancel-all", "root": waits})
    made = [(await api.submit("console-cancel-all", labels={"batch": "d"})).task_id for _ in range(3)]

    async def waiting() -> bool:
        statuses = {(await api.get(t, steps=False)).status for t in made}
        return statuses == {task_pb2.TASK_STATUS_WAITING}

    await until(waiting)
    await page.goto(f"{console.console.url}/tasks?status=waiting&label=batch%3Dd")
    page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.dismiss()))
    await page.locator("#cancel-all").click()
    await page.wait_for_timeout(300)  # a dismissed question posts nothing
    assert (await api.list_bulk_actions()).bulk_actions == []

    questions: list[str] = []
    answers: list[asyncio.Future[None]] = []

    def answer(dialog) -> None:
        questions.append(dialog.message)
        answers.append(asyncio.ensure_future(dialog.accept()))

    page.once("dialog", answer)
    async with page.expect_navigation():
        await page.locator("#cancel-all").click()
    assert "in the background" in questions[0]

    async def cancelled() -> bool:
        statuses = {(await api.get(t, steps=False)).status for t in made}
        return statuses == {task_pb2.TASK_STATUS_CANCELLED}

    await until(cancelled)
    await page.reload()
    await expect(page.locator("#bulk-table tbody")).to_contain_text("3 cancelled")
    assert not page.problems  # type: ignore[attr-defined]


async def test_a_running_action_is_aborted_from_its_page(console, api: Client, page):
    # an action a replica holds under a ten-minute lease: running, and no worker here takes it
    store = console.orchestrator.store.bulk_actions
    action = bulk_pb2.BulkAction(
        action_id=new_action_id(),
        kind=bulk_pb2.BULK_ACTION_KIND_CANCEL,
        state=bulk_pb2.BULK_ACTION_STATE_RUNNING,
        selection=bulk_pb2.TaskSelection(task_ids=["held"]),
    )
    action.create_time.GetCurrentTime()
    await store.create_bulk_action(BulkRecord(action.action_id, "", action.SerializeToString(), admin=True), 4)
    now_ms = int(time.time() * 1000)
    assert [r.action_id for r in await store.claim_bulk_actions(now_ms, 600_000, 100)] == [action.action_id]

    await page.goto(f"{console.console.url}/bulk")
    row = page.locator(f'#bulk-table tr[data-action-id="{action.action_id}"]')
    await expect(row).to_contain_text("running")
    async with page.expect_navigation():
        await row.locator('button[data-action="abort"]').click()
    await expect(row).to_contain_text("aborted from the console")
    await expect(row.locator('button[data-action="abort"]')).to_have_count(0)
    aborted = await api.get_bulk_action(action.action_id)
    assert aborted.state == bulk_pb2.BULK_ACTION_STATE_ABORTED and aborted.HasField("end_time")
    assert not page.problems  # type: ignore[attr-defined]
