"""An agent's conversation on the task page, in a real browser: what its model was last asked, turn
by turn (the question, the calls it made, each tool's answer), then its answer; a tool's answer
that holds markup shows as text; a long turn is cut, with how much more there is."""

from __future__ import annotations

import asyncio
import json

from playwright.async_api import expect

from mcp_sdk.proto import task_pb2
from tests.console.conftest import screenshot


def talkative(workflow_id: str) -> dict[str, object]:
    script = [
        [{"id": "c1", "name": "lookup", "arguments": {"text": "<b>tea</b>"}}],
        [{"id": "c2", "name": "shout", "arguments": {}}],
    ]
    messages = "[{'role': 'user', 'content': input.question, 'script': " + json.dumps(script) + "}]"
    tools = [
        {"name": "lookup", "description": "Finds a text", "node": {"id": "find", "step": {"protocol": "append"}}},
        {"name": "shout", "node": {"id": "loud", "step": {"protocol": "echo", "input": "{'said': 'LOUD'}"}}},
    ]
    model = {"id": "think", "step": {"protocol": "scripted_model"}}
    return {
        "workflow_id": workflow_id,
        "root": {"id": "helper", "agent": {"model": model, "messages": messages, "tools": tools}},
    }


async def test_the_task_page_shows_an_agents_conversation_turn_by_turn(console, api, page):
    await api.create_workflow(talkative("console-agent"))
    task = await api.submit("console-agent", {"question": "What is in the pot? " + "p" * 5000})
    assert (await api.result(task.task_id, timeout=10))["text"] == "done"
    await page.goto(f"{console.console.url}/tasks/{task.task_id}")

    talk = page.locator('#conversations .conversation[data-agent="helper"]')
    await expect(talk.locator("h3")).to_contain_text("3 round(s): what helper/think#3 was asked, and its answer")
    turns = talk.locator("li.turn")
    whos = [" ".join(w.split()) for w in await turns.locator(".who").all_inner_texts()]
    assert whos == [
        "user",
        "assistant calls",
        "tool lookup [c1]",
        "assistant calls",
        "tool shout [c2]",
        "answer",
    ]
    texts = await turns.locator("pre").all_inner_texts()
    assert texts[0].startswith("What is in the pot? ppp") and texts[0].endswith("... (1020 more characters)")
    assert texts[1] == 'lookup {"text": "<b>tea</b>"} [c1]'  # as text, not markup
    assert json.loads(texts[2]) == {"text": "<b>tea</b>find", "trail": ["helper/find"]}
    assert texts[3] == "shout {} [c2]" and texts[4] == '{"said": "LOUD"}' and texts[5] == "done"
    await expect(talk.locator("b")).to_have_count(0)
    await screenshot(page, "agent-conversation")
    assert (await api.get(task.task_id, steps=False)).status == task_pb2.TASK_STATUS_COMPLETED
    assert not page.problems  # type: ignore[attr-defined]


async def test_a_page_reads_a_bounded_part_of_many_or_large_conversations(console, api, page):
    """A map of 22 agents shows 20 conversations and says how many more there are; a round asked
    with more than 1 MB says so, and how to read it, instead of reading it into the page."""
    script = [[{"id": "c1", "name": "fetch", "arguments": {"bytes": 1_200_000, "tag": "big"}}]]
    big_first = "prev == 0 ? " + json.dumps(script) + " : []"  # the first agent's answer is 1.2 MB
    messages = "[{'role': 'user', 'content': 'item ' + string(prev), 'script': " + big_first + "}]"
    tools = [{"name": "fetch", "node": {"id": "read", "step": {"protocol": "sized"}}}]
    agent = {"model": {"id": "think", "step": {"protocol": "scripted_model"}}, "messages": messages, "tools": tools}
    body = {"id": "helper", "agent": agent}
    mapped = {"id": "all", "map": {"items": "input.items", "body": body}}
    await api.create_workflow({"workflow_id": "many-agents", "root": mapped})
    task = await api.submit("many-agents", {"items": list(range(22))})
    await api.result(task.task_id, timeout=60)

    await page.goto(f"{console.console.url}/tasks/{task.task_id}")
    talks = page.locator("#conversations .conversation")
    await expect(talks).to_have_count(20)
    await expect(page.locator("#conversations")).to_contain_text("2 more agents are not shown here")
    first = talks.first
    unread = f"mcp task conversation {task.task_id} --agent all/helper[0]"
    await expect(first.locator(".unread")).to_contain_text(unread)
    await expect(first.locator("li.turn .who")).to_have_count(0)  # what round 2 was asked is 1.2 MB: not read
    second = talks.nth(1)
    await expect(second.locator(".unread")).to_have_count(0)
    await expect(second.locator("li.turn .who")).to_have_text(["user", "answer"])
    assert not page.problems  # type: ignore[attr-defined]


async def test_a_running_agents_conversation_follows_its_rounds_without_a_reload(console, api, page):
    script = [[{"id": "c1", "name": "nap", "arguments": {"ms": 1500}}]]
    messages = "[{'role': 'user', 'content': 'Take a nap', 'script': " + json.dumps(script) + "}]"
    tools = [{"name": "nap", "node": {"id": "nap", "step": {"protocol": "sleep"}}}]
    agent = {"model": {"id": "think", "step": {"protocol": "scripted_model"}}, "messages": messages, "tools": tools}
    await api.create_workflow({"workflow_id": "napping-agent", "root": {"id": "helper", "agent": agent}})
    task = await api.submit("napping-agent", {})
    async with asyncio.timeout(10):
        while not any(s.path == "helper/nap" for s in (await api.get(task.task_id)).steps):
            await asyncio.sleep(0.05)

    await page.goto(f"{console.console.url}/tasks/{task.task_id}")
    talk = page.locator('#conversations .conversation[data-agent="helper"]')
    await expect(talk.locator("h3")).to_contain_text("1 round(s)")
    await expect(talk.locator("li.turn pre")).to_have_text(["Take a nap", 'nap {"ms": 1500} [c1]'])
    await expect(page.locator("#status")).to_have_text("COMPLETED", timeout=10_000)
    await expect(talk.locator("h3")).to_contain_text("2 round(s): what helper/think#2 was asked")
    await expect(talk.locator("li.turn .who")).to_have_text(
        ["user", "assistant calls", "tool nap [c1]", "answer"], timeout=5_000
    )
    assert not page.problems  # type: ignore[attr-defined]
