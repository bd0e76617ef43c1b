"""Reruns in the console, in a real browser: every step of a finished task offers "rerun from
here", which fills the rerun form with that step's input to edit; what the server refuses comes
back beside the form; a rerun's page links to its original and the original's to its reruns."""

from __future__ import annotations

import contextlib
import json

from playwright.async_api import expect

from mcp_sdk import Client, TaskFailed
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
