"""Submitting from the console, in a real browser, to a workflow with an input schema: its submit
form is built from the schema, what the server refuses comes back beside the fields with what was
typed, and a good input submits the task; a schema that is not an object of properties keeps the
JSON editor, with the schema shown beside it."""

from __future__ import annotations

from playwright.async_api import expect

from mcp_sdk.proto import task_pb2
from tests.console.conftest import screenshot

SCHEMA = {
    "type": "object",
    "required": ["topic"],
    "properties": {
        "topic": {"type": "string", "minLength": 3, "title": "Topic", "description": "what to write about"},
        "words": {"type": "integer", "minimum": 10, "maximum": 500},
        "draft_only": {"type": "boolean"},
        "tone": {"enum": ["formal", "friendly"]},
        "sources": {"type": "array", "items": {"type": "string"}},
    },
}


async def test_the_submit_form_is_built_from_the_input_schema_and_shows_what_it_rejects(console, api, page):
    root = {"id": "say", "step": {"protocol": "echo"}}
    await api.create_workflow({"workflow_id": "console-brief", "root": root, "input_schema": SCHEMA})
    await page.goto(f"{console.console.url}/workflows/console-brief")
    form = page.locator("#submit-form")
    await expect(form.locator("#input-fields")).to_be_visible()
    await expect(form.locator('textarea[name="input"]')).to_have_count(0)
    await expect(form.locator('input[type="checkbox"][name="field.draft_only"]')).to_be_visible()
    await expect(form.locator('input[type="number"][name="field.words"]')).to_be_visible()
    await expect(form.locator('select[name="field.tone"] option')).to_have_count(3)
    await expect(form).to_contain_text("what to write about")
    await screenshot(page, "submit-form-from-schema")

    await form.locator('input[name="field.topic"]').fill("Tea")
    await form.locator('input[name="field.words"]').fill("5")
    await form.locator("#submit").click()
    problem = page.locator("#submit-problem")
    await expect(problem).to_contain_text("INPUT_REJECTED")
    await expect(problem.locator(".violations")).to_contain_text("input_data.words")
    await expect(page.locator('#submit-form input[name="field.topic"]')).to_have_value("Tea")
    assert not (await api.list_tasks(workflow_id="console-brief")).tasks

    form = page.locator("#submit-form")
    await form.locator('input[name="field.topic"]').fill("Green tea")
    await form.locator('input[name="field.words"]').fill("120")
    await form.locator('input[name="field.draft_only"]').check()
    await form.locator('select[name="field.tone"]').select_option("friendly")
    await form.locator('textarea[name="field.sources"]').fill('["a", "b"]')
    await form.locator("#submit").click()
    await page.wait_for_url("**/tasks/*")
    await expect(page.locator("#status")).to_have_text("COMPLETED", timeout=10_000)
    (task,) = (await api.list_tasks(workflow_id="console-brief")).tasks
    assert task.status == task_pb2.TASK_STATUS_COMPLETED
    expected = {"topic": "Green tea", "words": 120, "draft_only": True, "tone": "friendly", "sources": ["a", "b"]}
    assert await api.result(task.task_id) == expected
    assert not page.problems  # type: ignore[attr-defined]


async def test_a_schema_without_properties_keeps_the_json_editor_and_shows_the_schema(console, api, page):
    schema = {"type": "object", "minProperties": 1}
    await api.create_workflow({"workflow_id": "console-any", "root": {"id": "s", "step": {"protocol": "echo"}},
                               "input_schema": schema})  # fmt: skip
    await page.goto(f"{console.console.url}/workflows/console-any")
    await expect(page.locator("#input-schema")).to_contain_text("minProperties")
    await page.locator("#submit").click()  # the editor's {} has no property
    await expect(page.locator("#submit-problem")).to_contain_text("input_data")
    await page.locator("#input").fill('{"k": 1}')
    await page.locator("#submit").click()
    await expect(page.locator("#status")).to_have_text("COMPLETED", timeout=10_000)
    assert not page.problems  # type: ignore[attr-defined]
