"""Reruns and cancels in the console, in a real browser: every step of a finished task offers "rerun from
here", which fills the rerun form with that step's input to edit; what the server refuses comes
back beside the form; a rerun's page links to its original and the original's to its reruns."""

from __future__ import annotations

import asyncio
import contextlib
import json

from playwright.async_api import expect

from mcp_sdk import Client, TaskFailed
from mcp_sdk.proto import task_pb2
from tests.console.conftest import screenshot


def three_appends(workflow_id: str) -> dict[str, object]:
    children = [{"id": f"s{i}", "step": {"protocol": "append"}} for i in (1, 2, 3)]
    return {"workflow_id": workflow_id, "root": {"id": "root", "sequence": {"children": children}}}


async def test_a_person_reruns_a_task_from_a_step_with_an_edited_input(console, api: Client, page):
    await api.create_workflow(three_appends("console-rerun"))
    original = await api.submit("console-rerun", {"text": ">"})
    assert await api.result(original.task_id) == {"text": ">s1s2s3", "trail": ["root/s1", "root/s2", "root/s3"]}

    await page.goto(f"{console.console.url}/tasks/{original.task_id}")
    await page.locator('#steps tr[data-path="root/s2"] td.rerun-here a').click()
    form = page.locator("#rerun-form")
    await expect(form.locator('input[name="path"]')).to_have_value("root/s2")
    typed = json.loads(await form.locator('textarea[name="input"]').input_value())
    assert typed["text"] == ">s1"  # what the step received, ready to edit

    # A step the task does not have is refused beside the form, with the field and why.
    await form.locator('input[name="path"]').fill("root/nowhere")
    await form.get_by_role("button", name="Rerun").click()
    await expect(page.locator("#rerun-form .violations")).to_contain_text("from_step_path")
    await expect(page.locator('#rerun-form input[name="path"]')).to_have_value("root/nowhere")

    form = page.locator("#rerun-form")
    await form.locator('input[name="path"]').fill("root/s2")
    await form.locator('textarea[name="input"]').fill(json.dumps({"text": "edited:"}))
    await form.get_by_role("button", name="Rerun").click()
    await page.wait_for_url("**/tasks/*")
    rerun_id = page.url.rsplit("/", 1)[-1]
    assert rerun_id != original.task_id
    await expect(page.locator("#status")).to_have_text("COMPLETED", timeout=10_000)
    await expect(page.locator("#rerun-of")).to_contain_text(original.task_id)
    await expect(page.locator("#rerun-of")).to_contain_text("root/s2")
    await expect(page.locator('#steps tr[data-path="root/s1"] .badge.reused')).to_be_visible()
    await expect(page.locator('#steps tr[data-path="root/s2"] .badge.reused')).to_have_count(0)
    assert (await api.result(rerun_id)) == {"text": "edited:s2s3", "trail": ["root/s2", "root/s3"]}
    await screenshot(page, "rerun")

    await page.locator("#rerun-of a").click()
    await expect(page.locator("#reruns")).to_contain_text(rerun_id)


def failing_middle(workflow_id: str, middle: str) -> dict[str, object]:
    body = {"protocol": "fail", "input": "{'code': 'INVALID_ARGUMENT'}"} if middle == "fail" else {"protocol": middle}
    children = [{"id": "s1", "step": {"protocol": "append"}}, {"id": "s2", "step": body}]
    return {"workflow_id": workflow_id, "root": {"id": "root", "sequence": {"children": children}}}


async def test_a_person_reruns_every_failed_task_a_filter_shows_once(console, api: Client, page):
    await api.create_workflow(failing_middle("console-bulk", "fail"))
    made = [await api.submit("console-bulk", {"text": ">"}, labels={"batch": "b"}) for _ in range(3)]
    for task in made:
        with contextlib.suppress(TaskFailed):
            await api.result(task.task_id)
    version = (await api.create_workflow(failing_middle("console-bulk", "append"))).version

    await page.goto(f"{console.console.url}/tasks?status=failed&status=running")
    await expect(page.locator("#bulk-rerun")).to_have_count(0)  # only for a filter on finished tasks
    await page.goto(f"{console.console.url}/tasks?status=failed&label=batch%3Db")
    form = page.locator("#bulk-rerun")
    await form.locator('input[name="version"]').fill(str(version))
    await form.get_by_role("button", name="Rerun these").click()
    await expect(page.locator("#bulk-done")).to_contain_text(f"Rerun 3 task(s) on version {version}; 0 had been")
    await screenshot(page, "bulk-rerun")
    await expect(page.locator('#bulk-rerun input[name="version"]')).to_have_value(str(version))
    async with page.expect_navigation():
        await page.locator("#bulk-rerun").get_by_role("button", name="Rerun these").click()
    await expect(page.locator("#bulk-done")).to_contain_text("Rerun 0 task(s)")
    await expect(page.locator("#bulk-done")).to_contain_text("3 had been rerun already")

    for task in made:
        reruns = list((await api.get(task.task_id)).reruns)
        assert len(reruns) == 1
        assert await api.result(reruns[0]) == {"text": ">s1s2", "trail": ["root/s1", "root/s2"]}
    assert not page.problems  # type: ignore[attr-defined]


async def test_a_person_cancels_every_waiting_task_a_filter_shows_after_saying_yes(console, api: Client, page):
    waits = {"id": "root", "sequence": {"children": [{"id": "w", "wait": {"signal": "go"}}]}}
    await api.create_workflow({"workflow_id": "console-cancel", "root": waits})
    made = [(await api.submit("console-cancel", labels={"batch": "c"})).task_id for _ in range(3)]
    other = (await api.submit("console-cancel", labels={"batch": "other"})).task_id
    for task_id in [*made, other]:
        for _ in range(200):
            if (await api.get(task_id, steps=False)).status == task_pb2.TASK_STATUS_WAITING:
                break
            await asyncio.sleep(0.05)

    await page.goto(f"{console.console.url}/tasks?status=completed")
    await expect(page.locator("#bulk-cancel")).to_have_count(0)  # only for a filter on unfinished tasks
    await page.goto(f"{console.console.url}/tasks?status=waiting&label=batch%3Dc")
    page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.dismiss()))
    await page.locator("#bulk-cancel").get_by_role("button", name="Cancel these").click()
    await page.wait_for_timeout(300)  # a dismissed question posts nothing
    assert {(await api.get(t, steps=False)).status for t in made} == {task_pb2.TASK_STATUS_WAITING}

    page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    await page.locator("#bulk-cancel").get_by_role("button", name="Cancel these").click()
    await expect(page.locator("#cancel-done")).to_contain_text("Cancelled 3 task(s)")
    await expect(page.locator("#task-table tbody")).to_contain_text("No tasks match.")
    await screenshot(page, "bulk-cancel")
    for task_id in made:
        task = await api.get(task_id, steps=False)
        assert task.status == task_pb2.TASK_STATUS_CANCELLED and "console" in task.error.message
    assert (await api.get(other, steps=False)).status == task_pb2.TASK_STATUS_WAITING
    await api.cancel(other)
    assert not page.problems  # type: ignore[attr-defined]
