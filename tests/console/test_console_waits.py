"""Answering waits in the console, in a real browser: the "Waiting" inbox lists the tasks that wait,
a waiting step shows its prompt and a form built from its schema, what the server refuses comes
back beside the form, and a good answer sends the signal and the task goes on."""

from __future__ import annotations

import asyncio

from playwright.async_api import expect

from mcp_sdk import Client
from mcp_sdk.proto import task_pb2
from tests.console.conftest import screenshot

SCHEMA = {
    "type": "object",
    "required": ["approved", "reviewer"],
    "properties": {
        "approved": {"type": "boolean", "title": "Approved"},
        "reviewer": {"type": "string", "minLength": 2},
        "score": {"type": "integer", "minimum": 1, "maximum": 5},
        "tone": {"enum": ["formal", "friendly"]},
        "notes": {"type": "array", "items": {"type": "string"}},
    },
}


def approval(workflow_id: str) -> dict[str, object]:
    review = {"signal": "review", "prompt": "{'draft': 'Tea is <b>good</b>', 'words': 3}", "schema": SCHEMA}
    children = [{"id": "review", "wait": review}, {"id": "publish", "step": {"protocol": "echo"}}]
    return {"workflow_id": workflow_id, "root": {"id": "root", "sequence": {"children": children}}}


async def until_waiting(api: Client, task_id: str) -> None:
    async with asyncio.timeout(10):
        while (await api.get(task_id, steps=False)).status != task_pb2.TASK_STATUS_WAITING:
            await asyncio.sleep(0.05)


async def test_a_person_answers_a_waiting_step_from_its_form(console, api, page):
    await api.create_workflow(approval("console-approval"))
    task = await api.submit("console-approval", {})
    await until_waiting(api, task.task_id)

    await page.goto(f"{console.console.url}/tasks")
    await page.locator("#inbox").click()
    await page.wait_for_url("**/tasks?status=waiting")
    await expect(page.locator(f'tr[data-task-id="{task.task_id}"]')).to_contain_text("waiting")
    await page.get_by_role("link", name=task.task_id).click()

    form = page.locator('form.answer[data-wait="root/review"]')
    await expect(form).to_be_visible()
    await expect(form.locator("pre.prompt")).to_contain_text("Tea is <b>good</b>")  # shown as text, not markup
    await expect(form.locator('input[type="checkbox"][name="field.approved"]')).to_be_visible()
    await expect(form.locator('input[type="number"][name="field.score"]')).to_be_visible()
    await expect(form.locator('select[name="field.tone"] option')).to_have_count(3)
    await expect(form.locator('textarea[name="field.notes"]')).to_be_visible()
    await screenshot(page, "waiting-form")

    # The server refuses what the schema rejects; the answer comes back beside the form, typed values kept.
    await form.locator('input[name="field.reviewer"]').fill("A")
    await form.locator('input[name="field.score"]').fill("9")
    await form.get_by_role("button", name="Send review").click()
    form = page.locator('form.answer[data-wait="root/review"]')
    await expect(form.locator(".violations")).to_contain_text("payload.reviewer")
    await expect(form.locator(".violations")).to_contain_text("payload.score")
    await expect(form.locator('input[name="field.reviewer"]')).to_have_value("A")
    assert (await api.get(task.task_id, steps=False)).status == task_pb2.TASK_STATUS_WAITING
    await screenshot(page, "waiting-form-refused")

    await form.locator('input[name="field.approved"]').check()
    await form.locator('input[name="field.reviewer"]').fill("Ada")
    await form.locator('input[name="field.score"]').fill("5")
    await form.locator('select[name="field.tone"]').select_option("friendly")
    await form.locator('textarea[name="field.notes"]').fill('["short", "clear"]')
    await form.get_by_role("button", name="Send review").click()
    await expect(page.locator("#status")).to_have_text("COMPLETED", timeout=10_000)
    await expect(page.locator("form.answer")).to_have_count(0)
    done = await api.get(task.task_id)
    assert await api.result(task.task_id) == {
        "approved": True,
        "reviewer": "Ada",
        "score": 5,
        "tone": "friendly",
        "notes": ["short", "clear"],
    }
    assert done.status == task_pb2.TASK_STATUS_COMPLETED
    assert not page.problems  # type: ignore[attr-defined]


async def test_a_wait_without_a_schema_takes_json_and_a_stale_form_is_refused(console, api, page):
    plain = {"id": "root", "sequence": {"children": [{"id": "anything", "wait": {"signal": "go"}}]}}
    await api.create_workflow({"workflow_id": "console-json", "root": plain})
    task = await api.submit("console-json", {})
    await until_waiting(api, task.task_id)
    await page.goto(f"{console.console.url}/tasks/{task.task_id}")
    form = page.locator('form.answer[data-wait="root/anything"]')
    await form.locator('textarea[name="json"]').fill("{not json")
    await form.get_by_role("button", name="Send go").click()
    await expect(page.locator(".answer-problem")).to_contain_text("not sent")
    await page.locator('form.answer textarea[name="json"]').fill('{"ok": [1, 2]}')
    await page.evaluate("document.querySelector('form.answer input[name=csrf]').value = 'forged'")
    await page.locator("form.answer").get_by_role("button", name="Send go").click()
    await expect(page.locator("body")).to_contain_text("stale")  # CSRF: nothing sent
    assert (await api.get(task.task_id, steps=False)).status == task_pb2.TASK_STATUS_WAITING
    await page.goto(f"{console.console.url}/tasks/{task.task_id}")
    await page.locator('form.answer textarea[name="json"]').fill('{"ok": [1, 2]}')
    await page.locator("form.answer").get_by_role("button", name="Send go").click()
    await expect(page.locator("#status")).to_have_text("COMPLETED", timeout=10_000)
    assert await api.result(task.task_id) == {"ok": [1, 2]}


async def test_a_wait_inside_a_subworkflow_gets_its_own_schema_s_form(console, api, page):
    """The enclosing workflow and the subworkflow each wait at a node called `review`: each form
    is built from its own node (the console once looked a wait up by its id alone)."""
    await api.create_workflow(approval("sub-approval"))
    outer = {"id": "review", "wait": {"signal": "outer"}}
    inner = {"id": "in", "subworkflow": {"workflow_id": "sub-approval"}}
    both = {"workflow_id": "both-review", "root": {"id": "p", "parallel": {"children": [outer, inner]}}}
    await api.create_workflow(both)
    task = await api.submit("both-review", {})
    await until_waiting(api, task.task_id)

    await page.goto(f"{console.console.url}/tasks/{task.task_id}")
    mine = page.locator('form.answer[data-wait="p/review"]')
    theirs = page.locator('form.answer[data-wait="p/in/root/review"]')
    await expect(mine.locator('textarea[name="json"]')).to_be_visible()  # no schema: JSON
    await expect(mine.locator('input[name="field.approved"]')).to_have_count(0)
    await theirs.locator('input[name="field.approved"]').check()
    await theirs.locator('input[name="field.reviewer"]').fill("Ada")
    await theirs.get_by_role("button", name="Send review").click()
    await expect(page.locator('form.answer[data-wait="p/in/root/review"]')).to_have_count(0, timeout=10_000)
    step = next(s for s in (await api.get(task.task_id)).steps if s.path == "p/in/root/review")
    assert step.status == task_pb2.STEP_STATUS_COMPLETED
    await page.goto(f"{console.console.url}/workflows/both-review")
    await expect(page.locator("svg")).to_contain_text("subworkflow in: sub-approval v1")
    assert not page.problems  # type: ignore[attr-defined]
