"""The console in a real browser: the list, a task's page updating live, graphs as SVG, cancel
and submit from the page, hostile values shown as text, and sign-in with another principal's
task out of sight."""

from __future__ import annotations

import asyncio
import json

from playwright.async_api import expect

from mcp_sdk import Client
from mcp_sdk.proto import task_pb2
from mcp_server.auth import hash_token
from mcp_server.console.app import start_console
from tests.console.conftest import ARTIFACTS, screenshot

HOSTILE = {
    "script": "<script>window.__xss = 'script'</script>",
    "img": "<img src=x onerror=\"window.__xss = 'img'\">",
    "svg": "<svg onload=\"window.__xss = 'svg'\"></svg>",
}


def sleeps(workflow_id: str, count: int, ms: int) -> dict[str, object]:
    children = [{"id": f"s{i}", "step": {"protocol": "sleep", "input": f"{{'ms': {ms}}}"}} for i in range(1, count + 1)]
    return {"workflow_id": workflow_id, "root": {"id": "root", "sequence": {"children": children}}}


async def all_step_paths(api: Client, task_id: str) -> set[str]:
    return {step.path async for step in api.steps(task_id)}


async def test_a_submitted_task_is_listed_and_its_page_goes_from_running_to_completed_live(console, api, page):
    # long enough that a step ends after the page listens, even when Mermaid takes its 3 s to load
    await api.create_workflow(sleeps("three-sleeps", 3, 1500))
    task = await api.submit("three-sleeps", {"note": "from the browser test"}, labels={"team": "console"})

    await page.goto(f"{console.console.url}/tasks")
    row = page.locator(f'tr[data-task-id="{task.task_id}"]')
    await expect(row).to_be_visible()
    await expect(row).to_contain_text("three-sleeps")
    await expect(row).to_contain_text("team=console")
    await screenshot(page, "tasks")

    await row.get_by_role("link", name=task.task_id).click()
    await page.wait_for_url(f"**/tasks/{task.task_id}")
    await page.evaluate("window.__sameDocument = true")  # gone if the page reloads
    status = page.locator("#status")
    await expect(status).to_have_text("RUNNING", timeout=10_000)
    await expect(status).to_have_text("COMPLETED", timeout=20_000)
    assert await page.evaluate("window.__sameDocument") is True, "the page reloaded"

    paths = await all_step_paths(api, task.task_id)
    assert {"root", "root/s1", "root/s2", "root/s3"} <= paths
    for path in paths:
        await expect(page.locator(f'#steps tr[data-path="{path}"]')).to_be_visible()
        await expect(page.locator(f'#tree li[data-path="{path}"]')).to_have_attribute("data-status", "completed")
    for index in (1, 2, 3):  # the outputs arrived with the steps' events, by reference to the stored values
        await expect(page.locator(f'#steps tr[data-path="root/s{index}"] pre.output')).to_contain_text(
            '"slept_ms": 1500'
        )
    final = await api.get(task.task_id, steps=False)
    log = page.locator("#events tbody tr")
    await expect(log).to_have_count(final.last_sequence)
    sequences = [int(s) for s in await log.evaluate_all("rows => rows.map(r => r.dataset.sequence)")]
    assert sequences == list(range(1, final.last_sequence + 1))
    await expect(page.locator("#graph svg")).to_be_visible()
    for index in (1, 2, 3):
        await expect(page.locator("#graph svg")).to_contain_text(f"s{index}")
    await expect(page.locator("#graph parsererror")).to_have_count(0)
    await expect(page.locator("#cancel")).to_have_count(0)
    await screenshot(page, "task")

    # The latency target (a step's completion shown within 100 ms of its event) is measured here and
    # reported, not asserted: timings are not pass/fail in a test (bench/ and docs/performance.md).
    latencies = await page.evaluate("window.mcpConsole.latencies")
    assert len(latencies) >= 1, "no step completion arrived live"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "step-latency-ms.json").write_text(json.dumps({"step_completed_shown_after_ms": latencies}))
    print(f"\nstep completion shown after (ms): {latencies}")
    assert page.problems == []  # type: ignore[attr-defined]


async def test_the_list_counts_update_live_and_offer_the_new_tasks(console, api, page):
    await api.create_workflow({"workflow_id": "echo", "root": {"id": "e", "step": {"protocol": "echo"}}})
    await page.goto(f"{console.console.url}/tasks")
    await page.evaluate("window.__sameDocument = true")
    await expect(page.locator('[data-count="completed"]')).to_have_text("0")
    for n in range(3):
        await api.run("echo", {"n": n}, timeout=30)
    await expect(page.locator('[data-count="completed"]')).to_have_text("3", timeout=10_000)
    await expect(page.locator("#total")).to_have_text("3")
    await expect(page.locator("#fresh")).to_be_visible()
    assert await page.evaluate("window.__sameDocument") is True
    await page.locator("#fresh").click()
    await expect(page.locator("#task-table tbody tr[data-task-id]")).to_have_count(3)


async def test_the_graphs_are_svg_rendered_in_the_browser(console, api, page):
    await api.create_workflow(
        {
            "workflow_id": "branches",
            "root": {
                "id": "fan",
                "parallel": {
                    "children": [{"id": "a", "step": {"protocol": "echo"}}, {"id": "b", "step": {"protocol": "echo"}}]
                },
            },
        }
    )
    task = await api.submit("branches", {"x": 1})
    await api.result(task.task_id, timeout=30)

    await page.goto(f"{console.console.url}/workflows/branches")
    graph = page.locator("#graph svg")
    await expect(graph).to_be_visible()
    for label in ("parallel fan", "input", "result", "echo"):
        await expect(graph).to_contain_text(label)
    await expect(page.locator("#graph parsererror")).to_have_count(0)
    await expect(page.locator("#definition")).to_contain_text("workflow_id: branches")
    await screenshot(page, "workflow")

    await page.goto(f"{console.console.url}/tasks/{task.task_id}")
    await expect(page.locator("#graph svg")).to_be_visible()
    await expect(page.locator("#graph svg")).to_contain_text("a")

    await page.goto(f"{console.console.url}/workflows")
    await expect(page.locator("#workflow-table")).to_contain_text("branches")
    await screenshot(page, "workflows")
    assert page.problems == []  # type: ignore[attr-defined]


async def test_cancel_from_the_page_cancels_a_running_task(console, api, page):
    await api.create_workflow(sleeps("long", 1, 30_000))
    task = await api.submit("long")
    await page.goto(f"{console.console.url}/tasks/{task.task_id}")
    await expect(page.locator("#status")).to_have_text("RUNNING", timeout=10_000)
    await page.locator("#cancel").click()
    await expect(page.locator("#status")).to_have_text("CANCELLED", timeout=10_000)
    assert (await api.get(task.task_id, steps=False)).status == task_pb2.TASK_STATUS_CANCELLED
    await expect(page.locator('#tree li[data-path="root/s1"]')).to_have_attribute("data-status", "cancelled")


async def test_a_task_that_ends_on_the_page_offers_delete_which_asks_first(console, api, page):
    await api.create_workflow(sleeps("short", 1, 1_500))
    task = await api.submit("short")
    await page.goto(f"{console.console.url}/tasks/{task.task_id}")
    await expect(page.locator("#delete")).to_be_hidden()  # not while it runs
    await expect(page.locator("#status")).to_have_text("COMPLETED", timeout=20_000)
    await expect(page.locator("#delete")).to_be_visible()
    asked: list[str] = []

    async def dismiss(dialog) -> None:
        asked.append(dialog.message)
        await dialog.dismiss()

    page.once("dialog", dismiss)
    await page.locator("#delete").click()
    await expect(page.locator("#status")).to_have_text("COMPLETED")
    assert asked and task.task_id in asked[0] and "cannot be undone" in asked[0]
    assert (await api.get(task.task_id, steps=False)).status == task_pb2.TASK_STATUS_COMPLETED

    async def accept(dialog) -> None:
        await dialog.accept()

    page.once("dialog", accept)
    await page.locator("#delete").click()
    await page.wait_for_url("**/tasks")
    await expect(page.locator(f'tr[data-task-id="{task.task_id}"]')).to_have_count(0)
    assert await api.delete(task.task_id, allow_missing=True) is False  # it is gone


async def test_a_step_s_calls_are_counted_across_retries_and_fallbacks_live_and_on_a_finished_page(console, api, page):
    """After a 2 s sleep, `fail` twice (a 5 s backoff between), then its fallback `echo`: 3 calls. A retry event's
    `attempt` counts one protocol's calls; the page counts them all, live and on reload (it set
    the cell to a retry's attempt + 1 even when replaying, so a finished page showed 2)."""
    retry = {"max_attempts": 2, "initial_backoff": "5s", "max_backoff": "5s"}
    shaky = {"protocol": "fail", "retry": retry, "fallbacks": [{"protocol": "echo"}]}
    children = [{"id": "first", "step": {"protocol": "sleep", "input": "{'ms': 2000}"}}, {"id": "s", "step": shaky}]
    root = {"id": "root", "sequence": {"children": children}}
    await api.create_workflow({"workflow_id": "second-tries", "root": root})
    task = await api.submit("second-tries")
    await page.goto(f"{console.console.url}/tasks/{task.task_id}")  # while `first` sleeps: s comes live
    attempts = page.locator('#steps tr[data-path="root/s"] .attempts')
    await expect(attempts).to_have_text("2", timeout=10_000)  # in the backoff: a second call is coming
    retry = page.locator('#steps tr[data-path="root/s"] .retry')
    await expect(retry).to_contain_text("retry 2 at ")  # and when it is due
    await expect(page.locator("#status")).to_have_text("COMPLETED", timeout=20_000)
    await expect(attempts).to_have_text("3")
    await expect(retry).to_have_count(0)
    final = await api.get(task.task_id)
    shaken = next(step for step in final.steps if step.path == "root/s")
    assert shaken.attempts == 3 and shaken.fallback_protocol == "echo"

    await page.reload()
    await expect(page.locator("#events tbody tr")).to_have_count(final.last_sequence)  # replayed
    await expect(attempts).to_have_text("3")
    assert page.problems == []  # type: ignore[attr-defined]


async def test_a_step_resumed_inside_its_backoff_still_says_when_its_retry_is_due(console, api, page):
    """A parallel: `flaky` in a 6 s backoff beside a wait; the task parks. A signal resumes it with
    the backoff still running: the step begins again in this life, and the page open all along
    keeps saying which retry is due and when (the step's start used to clear it until a reload)."""
    retry = {"max_attempts": 2, "initial_backoff": "6s", "max_backoff": "6s", "jitter": 0.05}
    shaky = {"id": "s", "step": {"protocol": "flaky", "input": "{'failures': 1}", "retry": retry}}
    root = {"id": "p", "parallel": {"children": [shaky, {"id": "w", "wait": {"signal": "go"}}]}}
    await api.create_workflow({"workflow_id": "resumed-in-backoff", "root": root})
    task = await api.submit("resumed-in-backoff")
    await page.goto(f"{console.console.url}/tasks/{task.task_id}")
    await expect(page.locator("#status")).to_have_text("WAITING", timeout=10_000)
    note = page.locator('#steps tr[data-path="p/s"] .retry')
    await expect(note).to_contain_text("retry 2 at ")
    due = await note.locator("time").get_attribute("datetime")
    reloaded = asyncio.ensure_future(page.wait_for_event("load", timeout=15_000))
    await api.signal(task.task_id, "go")
    # the step's second start (this life's), with the retry still to come
    again = page.locator("#events tbody tr", has_text="STEP_STARTED").filter(has_text="p/s")
    await expect(again).to_have_count(2, timeout=10_000)
    # read at once, not waited for: the page reloads itself after the signal, which would draw
    # the note and the badge from the step's record however the event was drawn
    badge = page.locator('#steps tr[data-path="p/s"] .step-status')
    assert (await note.count(), await note.locator("time").get_attribute("datetime")) == (1, due)
    assert "retry 2 at " in await note.inner_text() and await badge.inner_text() == "retrying"
    await reloaded  # the page's own reload first: one of ours racing it ends net::ERR_ABORTED
    await page.reload()  # and so does the page drawn from the step's record
    await expect(note).to_contain_text("retry 2 at ")
    await expect(badge).to_have_text("retrying")
    await expect(page.locator("#status")).to_have_text("COMPLETED", timeout=20_000)
    await expect(note).to_have_count(0)
    assert page.problems == []  # type: ignore[attr-defined]


async def test_submit_from_the_workflow_page_and_a_bad_input_is_explained(console, api, page):
    await api.create_workflow({"workflow_id": "echo", "root": {"id": "e", "step": {"protocol": "echo"}}})
    await page.goto(f"{console.console.url}/workflows/echo")
    await page.locator("#input").fill('{"greeting": "hello from the form"}')
    await page.locator("#submit").click()
    await page.wait_for_url("**/tasks/*")
    await expect(page.locator("#status")).to_have_text("COMPLETED", timeout=20_000)
    await expect(page.locator("#result")).to_contain_text("hello from the form")

    await page.goto(f"{console.console.url}/workflows/echo")
    before = (await api.list_tasks()).total_size
    await page.locator("#input").fill('{"unclosed": ')
    await page.locator("#submit").click()
    await expect(page.locator("#submit-problem")).to_contain_text("cannot submit")
    await expect(page.locator("#input")).to_have_value('{"unclosed": ')  # what was typed is kept
    assert (await api.list_tasks()).total_size == before


async def test_values_that_look_like_markup_are_shown_as_text_and_run_nothing(console, api, page):
    await api.create_workflow({"workflow_id": "echo", "root": {"id": "e", "step": {"protocol": "echo"}}})
    await api.create_workflow(
        {
            "workflow_id": "fails",
            "root": {
                "id": "f",
                "step": {
                    "protocol": "fail",
                    "input": f"{{'code': 'FAILED_PRECONDITION', 'message': {json.dumps(HOSTILE['img'])}}}",
                },
            },
        }
    )
    await api.create_workflow(
        {
            "workflow_id": "routes",
            "root": {
                "id": "r",
                "adaptive": {
                    "initial_state": "start",
                    "states": [
                        {
                            "name": "start",
                            "node": {"id": "s", "step": {"protocol": "echo"}},
                            "transitions": [
                                {"when": f"output.x == {json.dumps(HOSTILE['img'])}", "to": "done"},
                                {"to": "done"},
                            ],
                        },
                        {"name": "done", "terminal": True, "node": {"id": "d", "step": {"protocol": "echo"}}},
                    ],
                },
            },
        }
    )
    echoed = await api.submit("echo", HOSTILE, labels={"note": "<b>bold</b>"})
    failed = await api.submit("fails")
    await api.result(echoed.task_id, timeout=30)

    await page.goto(f"{console.console.url}/tasks/{echoed.task_id}")
    await expect(page.locator("#status")).to_have_text("COMPLETED", timeout=20_000)
    await expect(page.locator("#result")).to_contain_text(HOSTILE["script"])
    await expect(page.locator('#steps tr[data-path="e"] pre.output')).to_contain_text(
        json.dumps(HOSTILE["img"])
    )  # as JSON text
    await expect(page.locator("dl.facts")).to_contain_text("note=<b>bold</b>")
    await screenshot(page, "task-hostile-values")

    await page.goto(f"{console.console.url}/tasks/{failed.task_id}")
    await expect(page.locator("#status")).to_have_text("FAILED", timeout=20_000)
    await expect(page.locator("#task-error")).to_contain_text(HOSTILE["img"])
    await expect(page.locator('#steps tr[data-path="f"] p.error')).to_contain_text(HOSTILE["img"])
    await expect(page.locator("#events")).to_contain_text(HOSTILE["img"])

    await page.goto(f"{console.console.url}/workflows/routes")
    await expect(page.locator("#graph svg")).to_contain_text("onerror")  # the condition, as text
    await screenshot(page, "workflow-hostile-condition")
    await page.goto(f"{console.console.url}/tasks")
    await expect(page.locator(f'tr[data-task-id="{echoed.task_id}"]')).to_contain_text("note=<b>bold</b>")

    await page.wait_for_timeout(300)  # an onerror would have fired by now
    assert await page.evaluate("window.__xss") is None
    for selector in ("main img", "main b", "main script", "#steps svg", "dl.facts svg"):
        assert await page.locator(selector).count() == 0, selector
    assert page.problems == []  # type: ignore[attr-defined]


async def test_with_tokens_the_console_signs_in_and_another_principals_task_is_not_found(
    server_factory, page, tmp_path
):
    principals = [
        {"name": "ada", "token_sha256": hash_token("ada-secret"), "roles": ["author"]},
        {"name": "bob", "token_sha256": hash_token("bob-secret"), "roles": []},
    ]
    (tmp_path / "principals.json").write_text(json.dumps({"principals": principals}))
    running = await server_factory(auth_file=str(tmp_path / "principals.json"), console_listen="127.0.0.1:0")
    async with Client(running.address, token="ada-secret") as ada:
        await ada.create_workflow({"workflow_id": "echo", "root": {"id": "e", "step": {"protocol": "echo"}}})
        task = await ada.submit("echo", {"private": True})
        await ada.result(task.task_id, timeout=30)

    url = running.console.url
    await page.goto(f"{url}/tasks")
    await page.wait_for_url("**/login?next=*")
    await screenshot(page, "login")
    await page.locator("#token").fill("wrong")
    await page.locator("#token").press("Enter")
    await expect(page.locator("#login-problem")).to_contain_text("did not accept")
    await page.locator("#token").fill("bob-secret")
    await page.locator("#token").press("Enter")
    await page.wait_for_url(f"{url}/tasks")
    await expect(page.locator(f'tr[data-task-id="{task.task_id}"]')).to_have_count(0)
    cookie = next(c for c in await page.context.cookies() if c["name"] == "mcp_token")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and "expires" in cookie and cookie["expires"] == -1

    response = await page.goto(f"{url}/tasks/{task.task_id}")
    assert response is not None and response.status == 404
    await expect(page.locator("h1")).to_contain_text("404")

    await page.get_by_role("button", name="Sign out").click()
    await page.wait_for_url("**/login")
    await page.goto(f"{url}/login?next=/tasks/{task.task_id}")
    await page.locator("#token").fill("ada-secret")
    await page.locator("#token").press("Enter")
    await page.wait_for_url(f"{url}/tasks/{task.task_id}")
    await expect(page.locator("#status")).to_have_text("COMPLETED")


async def test_the_protocols_page_shows_every_instance(console, page):
    await page.goto(f"{console.console.url}/protocols")
    table = page.locator("#protocol-table")
    for name in ("echo", "sleep", "fail"):
        await expect(table).to_contain_text(name)
    await expect(table).to_contain_text("serving")
    await expect(table).to_contain_text("closed")
    await screenshot(page, "protocols")


async def test_after_the_console_restarts_the_page_resumes_from_the_last_event_it_had(console, api, page):
    """A console apart from the server goes away mid-task and comes back on the same port; the
    browser's EventSource reconnects with Last-Event-ID, and the log has every event once."""
    standalone = await start_console(console.address, "127.0.0.1:0")
    port = standalone.url.rsplit(":", 1)[1]
    try:
        await api.create_workflow(sleeps("six", 6, 600))
        task = await api.submit("six")
        await page.goto(f"{standalone.url}/tasks/{task.task_id}")
        await expect(page.locator('#tree li[data-path="root/s1"]')).to_have_attribute(
            "data-status", "completed", timeout=10_000
        )
        await standalone.stop()
        await asyncio.sleep(1.0)
        standalone = await start_console(console.address, f"127.0.0.1:{port}")
        await expect(page.locator("#status")).to_have_text("COMPLETED", timeout=30_000)
        final = await api.get(task.task_id, steps=False)
        sequences = [
            int(s)
            for s in await page.locator("#events tbody tr").evaluate_all("rows => rows.map(r => r.dataset.sequence)")
        ]
        assert sequences == list(range(1, final.last_sequence + 1))
    finally:
        await standalone.stop()


async def test_the_event_table_shows_the_latest_thousand_events_and_the_earlier_ones_on_demand(console, api, page):
    # a log may hold hundreds of thousands of events: the table keeps the latest 1,000 rows, says
    # how many it leaves out, and shows those a thousand at a time when asked
    chatter = {"protocol": "chatter", "stream": True, "input": "{'n': 2200, 'size': 1}"}
    await api.create_workflow({"workflow_id": "long-log", "root": {"id": "talk", "step": chatter}})
    task = await api.submit("long-log", {})
    await api.result(task.task_id, timeout=60)
    last = (await api.get(task.task_id, steps=False)).last_sequence
    await page.goto(f"{console.console.url}/tasks/{task.task_id}")
    note = page.locator("#events tbody tr.left-out")
    await expect(note.locator("span")).to_have_text(f"{last - 1000} earlier events are not shown here", timeout=30_000)
    rows = page.locator("#events tbody tr[data-sequence]")
    await expect(rows).to_have_count(1000)

    async def shown() -> list[int]:
        return [int(s) for s in await rows.evaluate_all("rows => rows.map(r => r.dataset.sequence)")]

    assert await shown() == list(range(last - 999, last + 1))
    await expect(page.locator('#tree li[data-path="talk"]')).to_have_attribute("data-status", "completed")
    await note.get_by_role("button").click()
    await expect(rows).to_have_count(2000)
    assert await shown() == list(range(last - 1999, last + 1))
    await expect(note.locator("span")).to_have_text(f"{last - 2000} earlier events are not shown here")
    await note.get_by_role("button").click()
    await expect(rows).to_have_count(last)
    assert await shown() == list(range(1, last + 1))
    await expect(note).to_have_count(0)
    assert page.problems == []  # type: ignore[attr-defined]


async def test_a_page_open_while_a_branch_runs_beside_a_wait_shows_the_task_parked(console, api, page):
    """A call of 1.5 s beside a wait: the page, opened while the call runs, shows RUNNING and the
    answer form; when the call ends the task parks (no event says so) and the page shows WAITING
    without a reload (it showed RUNNING until one)."""
    slow = {"id": "slow", "step": {"protocol": "sleep", "input": "{'ms': 1500}"}}
    root = {"id": "p", "parallel": {"children": [slow, {"id": "w", "wait": {"signal": "go"}}]}}
    await api.create_workflow({"workflow_id": "parks-later", "root": root})
    task = await api.submit("parks-later")
    async with asyncio.timeout(10):  # the page is drawn once the wait has begun, while the call runs
        while "p/w" not in await all_step_paths(api, task.task_id):
            await asyncio.sleep(0.05)
    await page.goto(f"{console.console.url}/tasks/{task.task_id}")
    await expect(page.locator("form.answer")).to_have_count(1)
    assert await page.locator("#status").inner_text() == "RUNNING"
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))
    await expect(page.locator("#status")).to_have_text("WAITING", timeout=10_000)
    assert navigations == []  # the header was asked for, the page not reloaded
    assert (await api.get(task.task_id, steps=False)).status == task_pb2.TASK_STATUS_WAITING
    await api.signal(task.task_id, "go")
    await expect(page.locator("#status")).to_have_text("COMPLETED", timeout=10_000)
    assert page.problems == []  # type: ignore[attr-defined]
