"""The console over plain HTTP (aiohttp's client against the real console): CSRF on every POST,
the security headers, bad queries, errors as JSON for scripts, the event stream resumed after
Last-Event-ID, and sign-in with a token."""

from __future__ import annotations

import asyncio
import json
import re

import aiohttp
import pytest
from google.protobuf import duration_pb2

from mcp_sdk import Client
from mcp_sdk.proto import registry_pb2, task_pb2
from mcp_server.auth import hash_token

pytestmark = pytest.mark.asyncio


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf-token" content="([0-9a-f]{64})"', page)
    assert found, "the page carries no CSRF token"
    return found.group(1)


async def sse_events(response: aiohttp.ClientResponse) -> list[dict[str, str]]:
    """The server-sent events of a finished stream, each as its fields."""
    events, current = [], {}
    async for raw in response.content:
        line = raw.decode().rstrip("\r\n")
        if not line:
            if current:
                events.append(current)
            current = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            current[name] = value
    return events


async def test_every_post_needs_the_csrf_token_of_this_browser(console, api):
    await api.create_workflow({"workflow_id": "echo", "root": {"id": "e", "step": {"protocol": "echo"}}})
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        page = await (await browser.get(f"{console.console.url}/workflows/echo")).text()
        token = csrf_of(page)
        missing = await browser.post(
            f"{console.console.url}/workflows/echo/submit", data={"input": "{}"}, allow_redirects=False
        )
        assert missing.status == 403
        forged = await browser.post(
            f"{console.console.url}/workflows/echo/submit",
            data={"input": "{}", "csrf": "0" * 64},
            allow_redirects=False,
        )
        assert forged.status == 403
        assert (await api.list_tasks()).total_size == 0
        accepted = await browser.post(
            f"{console.console.url}/workflows/echo/submit",
            data={"input": '{"a": 1}', "csrf": token},
            allow_redirects=False,
        )
        assert accepted.status == 303 and accepted.headers["Location"].startswith("/tasks/")
        task_id = accepted.headers["Location"].removeprefix("/tasks/")
        await api.result(task_id, timeout=30)
        unasked = await browser.post(f"{console.console.url}/tasks/{task_id}/delete", allow_redirects=False)
        assert unasked.status == 403 and (await api.get(task_id, steps=False)).task_id == task_id
        deleted = await browser.post(
            f"{console.console.url}/tasks/{task_id}/delete", data={"csrf": token}, allow_redirects=False
        )
        assert deleted.status == 303 and deleted.headers["Location"] == "/tasks"
        assert await api.delete(task_id, allow_missing=True) is False
    async with aiohttp.ClientSession(
        cookie_jar=aiohttp.CookieJar(unsafe=True)
    ) as other_browser:  # another seed: the token is useless there
        stolen = await other_browser.post(
            f"{console.console.url}/workflows/echo/submit", data={"input": "{}", "csrf": token}, allow_redirects=False
        )
        assert stolen.status == 403
    assert (await api.list_tasks()).total_size == 0  # the one accepted, deleted since; none stolen


async def test_pages_carry_the_security_headers_and_cookies_are_strict(console):
    async with aiohttp.ClientSession() as browser:
        response = await browser.get(f"{console.console.url}/tasks")
        assert response.status == 200
        csp = response.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "'unsafe-inline'" not in csp.split("script-src")[1].split(";")[0]
        assert "frame-ancestors 'none'" in csp and response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Cache-Control"] == "no-store"
        seed = response.cookies["mcp_seed"]
        assert seed["httponly"] and seed["samesite"] == "Strict" and seed["path"] == "/"
        script = await browser.get(f"{console.console.url}/static/console.js")
        assert script.status == 200 and "max-age" in script.headers["Cache-Control"]
        mermaid = await browser.get(f"{console.console.url}/static/vendor/mermaid.min.js")
        assert mermaid.status == 200, "Mermaid is not installed: make console-assets"


async def test_bad_queries_and_missing_things_are_clear_errors(console):
    async with aiohttp.ClientSession() as browser:
        bad = await browser.get(f"{console.console.url}/tasks?status=exploded")
        assert (
            bad.status == 400 and "unknown status &#39;exploded&#39;" in await bad.text()
        )  # escaped, as everything is
        missing = await browser.get(f"{console.console.url}/tasks/no-such-task")
        assert missing.status == 404 and "not found" in (await missing.text()).lower()
        as_json = await browser.get(f"{console.console.url}/tasks/no-such-task/task.json")
        assert as_json.status == 404 and (await as_json.json())["code"] == "NOT_FOUND"
        stream = await browser.get(f"{console.console.url}/tasks/no-such-task/events")
        assert stream.status == 404 and (await stream.json())["code"] == "NOT_FOUND"
        bad_id = await browser.get(f"{console.console.url}/tasks/{'x' * 300}")
        assert bad_id.status == 400
        nowhere = await browser.get(f"{console.console.url}/no/such/page")
        assert nowhere.status == 404
        for odd in ("abc", "99999999999999999999999", "%C2%B2", "-1"):  # protobuf's int64 refuses the second
            version = await browser.get(f"{console.console.url}/workflows/echo?version={odd}")
            assert version.status == 400, odd


async def test_the_event_stream_resumes_after_last_event_id_and_ends_after_the_terminal_event(console, api):
    await api.create_workflow({"workflow_id": "echo", "root": {"id": "e", "step": {"protocol": "echo"}}})
    task = await api.submit("echo", {"a": 1})
    await api.result(task.task_id, timeout=30)
    last = (await api.get(task.task_id, steps=False)).last_sequence
    async with aiohttp.ClientSession() as browser:
        everything = await sse_events(await browser.get(f"{console.console.url}/tasks/{task.task_id}/events"))
        resumed = await sse_events(
            await browser.get(f"{console.console.url}/tasks/{task.task_id}/events", headers={"Last-Event-ID": "3"})
        )
        past_all = await sse_events(
            await browser.get(f"{console.console.url}/tasks/{task.task_id}/events?after={'9' * 30}")
        )
    assert [int(e["id"]) for e in everything if e.get("event") == "task"] == list(range(1, last + 1))
    assert [int(e["id"]) for e in resumed if e.get("event") == "task"] == list(range(4, last + 1))
    assert [e["event"] for e in past_all] == ["end"]  # nothing after a sequence past any uint64
    assert everything[-1]["event"] == "end" and json.loads(everything[-2]["data"])["type"] == "COMPLETED"


async def test_earlier_events_come_a_page_before_the_sequence_asked_whatever_it_is(console, api):
    # a running task too: a page ends before events still to come, so it never waits for them
    await api.create_workflow({"workflow_id": "nap", "root": {"id": "n", "step": {"protocol": "sleep"}}})
    task = await api.submit("nap", {"ms": 3000})
    url = f"{console.console.url}/tasks/{task.task_id}/earlier.json"
    async with aiohttp.ClientSession() as browser:
        async with asyncio.timeout(10):  # running: its step has started
            while (last := (await api.get(task.task_id, steps=False)).last_sequence) < 3:
                await asyncio.sleep(0.05)
        for before, wanted in (
            ("2", [1]),
            (str(last + 1), list(range(1, last + 1))),
            ("9" * 30, list(range(1, last + 1))),
        ):
            async with asyncio.timeout(5):
                page = await (await browser.get(f"{url}?before={before}")).json()
            assert [e["sequence"] for e in page["events"]] == wanted, before
        for odd in ("", "0", "1", "abc", "-5", "%C2%B2"):
            page = await (await browser.get(f"{url}?before={odd}")).json()
            assert page["events"] == [], odd
        missing = await browser.get(f"{console.console.url}/tasks/no-such-task/earlier.json?before=5")
        assert missing.status == 404 and (await missing.json())["code"] == "NOT_FOUND"


async def test_signing_in_checks_the_token_with_the_server(server_factory, tmp_path):
    (tmp_path / "p.json").write_text(
        json.dumps({"principals": [{"name": "ada", "token_sha256": hash_token("ada-secret"), "roles": []}]})
    )
    running = await server_factory(auth_file=str(tmp_path / "p.json"), console_listen="127.0.0.1:0")
    url = running.console.url
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        away = await browser.get(f"{url}/tasks", allow_redirects=False)
        assert away.status == 303 and away.headers["Location"] == "/login?next=%2Ftasks"
        assert (await browser.get(f"{url}/tasks.json")).status == 404
        form = await (await browser.get(f"{url}/login")).text()
        refused = await browser.post(
            f"{url}/login", data={"token": "guess", "csrf": csrf_of(form), "next": "/tasks"}, allow_redirects=False
        )
        assert refused.status == 401
        elsewhere = await browser.post(
            f"{url}/login",
            data={"token": "ada-secret", "csrf": csrf_of(form), "next": "//evil.example/x"},
            allow_redirects=False,
        )
        assert elsewhere.status == 303 and elsewhere.headers["Location"] == "/tasks"  # never to another site
        cookie = elsewhere.cookies["mcp_token"]
        assert (
            cookie.value == "ada-secret"
            and cookie["httponly"]
            and cookie["samesite"] == "Strict"
            and not cookie["expires"]
        )
        assert (await browser.get(f"{url}/tasks", allow_redirects=False)).status == 200


async def test_a_large_value_is_a_link_to_the_whole_of_it_read_through_its_reference(console, api):
    await api.create_workflow(
        {"workflow_id": "big", "root": {"id": "s", "step": {"protocol": "sized", "input": "{'bytes': 300000}"}}}
    )
    task = await api.submit("big")
    result = await api.result(task.task_id, timeout=30)
    async with aiohttp.ClientSession() as browser:
        page = await (await browser.get(f"{console.console.url}/tasks/{task.task_id}")).text()
        assert '300000 bytes: <a href="/tasks/' in page and "value?path=s&amp;field=output" in page
        whole = await browser.get(f"{console.console.url}/tasks/{task.task_id}/value?path=s&field=output")
        assert whole.status == 200 and whole.content_type == "application/json"
        assert await whole.json() == result
        preview = await (await browser.get(f"{console.console.url}/tasks/{task.task_id}/step.json?path=s")).json()
        assert preview["output"].startswith("{") and preview["input"] == '{\n  "bytes": 300000\n}'
        bad_field = await browser.get(f"{console.console.url}/tasks/{task.task_id}/value?path=s&field=secret")
        assert bad_field.status == 400


async def test_consoles_sharing_a_secret_accept_each_others_forms(console, api, monkeypatch):
    from mcp_server.console.app import start_console

    monkeypatch.setenv("MCP_CONSOLE_SECRET", "shared by both consoles")
    first, second = (
        await start_console(console.address, "127.0.0.1:0"),
        await start_console(console.address, "127.0.0.1:0"),
    )
    try:
        await api.create_workflow({"workflow_id": "echo", "root": {"id": "e", "step": {"protocol": "echo"}}})
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
            token = csrf_of(await (await browser.get(f"{first.url}/workflows/echo")).text())
            seed = next(c for c in browser.cookie_jar if c.key == "mcp_seed").value
            posted = await browser.post(
                f"{second.url}/workflows/echo/submit",
                data={"input": "{}", "csrf": token},
                cookies={"mcp_seed": seed},
                allow_redirects=False,
            )
            assert posted.status == 303
    finally:
        await first.stop()
        await second.stop()


async def test_bad_inputs_in_the_submit_form_are_explained_and_submit_nothing(console, api):
    await api.create_workflow({"workflow_id": "echo", "root": {"id": "e", "step": {"protocol": "echo"}}})
    inputs = {
        "nested too deeply for protobuf": json.dumps(nested_objects(60)),
        "past the server's depth limit": json.dumps(nested_objects(33)),
        "above the input size limit": json.dumps({"text": "x" * 1_100_000}),
        "not an object": "[1, 2]",
        "nested past the JSON parser": "[" * 50_000 + "]" * 50_000,
        "NaN": '{"a": NaN}',
        "not JSON": "{'single': 'quotes'}",
    }
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        token = csrf_of(await (await browser.get(f"{console.console.url}/workflows/echo")).text())
        for name, text in inputs.items():
            answer = await browser.post(
                f"{console.console.url}/workflows/echo/submit",
                data={"input": text, "csrf": token},
                allow_redirects=False,
            )
            page = await answer.text()
            assert answer.status == 400 and 'id="submit-problem"' in page, (name, answer.status, page[:300])
        for field, number in (("priority", "99999999999999999999"), ("priority", "-3000000000"), ("version", "1e3")):
            answer = await browser.post(
                f"{console.console.url}/workflows/echo/submit",
                data={"input": "{}", field: number, "csrf": token},
                allow_redirects=False,
            )
            page = await answer.text()
            assert answer.status == 400 and f"{field} must be" in page, (field, number, answer.status, page[:300])
        huge = await browser.post(
            f"{console.console.url}/workflows/echo/submit",
            data={"input": "x" * 3_000_000, "csrf": token},
            allow_redirects=False,
        )
        assert huge.status == 413
    assert (await api.list_tasks()).total_size == 0


def nested_objects(levels: int) -> dict[str, object]:
    """An object `levels` objects deep."""
    value: dict[str, object] = {"bottom": True}
    for _ in range(levels - 1):
        value = {"d": value}
    return value


async def test_the_protocols_page_lists_the_rate_limits_to_those_who_may_see_them(server_factory, tmp_path):
    principals = [
        {"name": "ada", "token_sha256": hash_token("ada-secret"), "roles": []},
        {"name": "ops", "token_sha256": hash_token("ops-secret"), "roles": ["operator"]},
    ]
    (tmp_path / "p.json").write_text(json.dumps({"principals": principals}))
    running = await server_factory(auth_file=str(tmp_path / "p.json"), console_listen="127.0.0.1:0")
    url = running.console.url
    for token, shows_limits in (("ops-secret", True), ("ada-secret", False)):
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
            form = await (await browser.get(f"{url}/login")).text()
            await browser.post(f"{url}/login", data={"token": token, "csrf": csrf_of(form), "next": "/protocols"})
            if shows_limits:
                await running.orchestrator.rate_limits.put(
                    registry_pb2.RateLimit(key="protocol:echo", limit=5, period=duration_pb2.Duration(seconds=1))
                )
            page = await (await browser.get(f"{url}/protocols")).text()
            listed = await (await browser.get(f"{url}/rate_limits.json")).json()
            if shows_limits:
                assert 'data-key="protocol:echo"' in page and ">5<" in page
                assert listed == [
                    {"key": "protocol:echo", "limit": "5", "period": "1 s", "burst": "0", "available": "5"}
                ]
            else:
                assert "Only operators and admins see the rate limits" in page and listed == []
                looked = await (await browser.get(f"{url}/protocols", params={"rate_key": "protocol:echo"})).text()
                assert 'id="rate-limit-found"' not in looked  # nor one key's
    # one key looked up: the limit it falls under and its own room
    await running.orchestrator.rate_limits.put(
        registry_pb2.RateLimit(key="tenant:*", limit=60, period=duration_pb2.Duration(seconds=60), burst=5)
    )
    await running.orchestrator.rate_limits.take_units([("tenant:acme", 3)])
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        form = await (await browser.get(f"{url}/login")).text()
        await browser.post(f"{url}/login", data={"token": "ops-secret", "csrf": csrf_of(form), "next": "/protocols"})
        for key, said in (
            ("tenant:acme", 'under the template <span class="mono">tenant:*</span>'),
            ("protocol:echo", "its own limit"),
            ("user:ann", "No rate limit applies to user:ann"),
            ("a b", "cannot be a rate-limit key"),
            ("<script>", "No rate limit applies to &lt;script&gt;"),
        ):
            page = await (await browser.get(f"{url}/protocols", params={"rate_key": key})).text()
            found = page[page.index('id="rate-limit-found"') :]
            assert said in " ".join(found.split()), (key, found[:400])
        page = await (await browser.get(f"{url}/protocols", params={"rate_key": "tenant:acme"})).text()
        assert '<span class="available">62</span> available now.' in page  # 65 less the 3 taken
        await running.orchestrator.rate_limits.take_units([("tenant:acme", 62)])
        page = await (await browser.get(f"{url}/protocols", params={"rate_key": "tenant:acme"})).text()
        assert '<span class="available">0</span> available now, the next unit in ' in page
        assert "waiting in line" not in page
        await running.orchestrator.rate_limits.take_units([("tenant:acme", 1)], "task/step/protocol")
        page = await (await browser.get(f"{url}/protocols", params={"rate_key": "tenant:acme"})).text()
        assert '<span class="waiting">1</span> waiting in line.' in page


async def test_the_event_stream_leaves_out_the_large_data_the_page_never_shows(console, api):
    # 20 progress events of 100 KB of data each: 2 MB the page would receive and never show
    chatter = {"protocol": "chatter", "stream": True, "input": "{'n': 20, 'size': 100000}"}
    await api.create_workflow({"workflow_id": "chatty", "root": {"id": "talk", "step": chatter}})
    task = await api.submit("chatty", {})
    await api.result(task.task_id, timeout=30)
    async with aiohttp.ClientSession() as browser:
        stream = await sse_events(await browser.get(f"{console.console.url}/tasks/{task.task_id}/events"))
    shown = [json.loads(e["data"]) for e in stream if e.get("event") == "task"]
    progress = [e for e in shown if e["type"] == "PROGRESS"]
    assert len(progress) == 20
    for i, event in enumerate(progress):  # the filler is left out and named; the small fraction is kept
        assert (event["message"], event["data"], event["left_out"]) == (
            f"message {i}",
            {"fraction": i / 20},
            ["filler"],
        )
    assert sum(len(e["data"]) for e in stream) < 64 * 1024  # the whole log, against 2 MB of data
    completed = next(e for e in shown if e["type"] == "STEP_COMPLETED")
    assert completed["data"]["kind"] == "step" and completed["left_out"] == []  # small data is kept


async def test_a_full_store_s_refusal_is_shown_beside_what_was_typed_and_it_goes_through_later(
    server_factory, tmp_path
):
    """A submission the store has no room for answers 429 with the server's reason on the workflow
    page, the typed input kept (before: an error page, the input lost); sent again once there is
    room, it is submitted."""
    running = await server_factory(store=f"sqlite:///{tmp_path}/full.db", console_listen="127.0.0.1:0")
    database = running.orchestrator.store.connection
    base = running.console.url
    typed = '{"note": "written by hand, long and careful", "draft": "%s"}' % ("x" * 200_000)  # needs new pages
    async with Client(running.address) as api:
        await api.create_workflow({"workflow_id": "echo", "root": {"id": "e", "step": {"protocol": "echo"}}})
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        token = csrf_of(await (await browser.get(f"{base}/workflows/echo")).text())
        await database.run(
            lambda c: c.execute(f"PRAGMA max_page_count = {c.execute('PRAGMA page_count').fetchone()[0]}")
        )
        form = {"input": typed, "priority": "0", "labels": "", "version": "0", "csrf": token}
        refused = await browser.post(f"{base}/workflows/echo/submit", data=form, allow_redirects=False)
        page = await refused.text()
        assert refused.status == 429, page[:500]
        assert "STORE_FULL" in page and "nothing was written" in page
        assert "written by hand, long and careful" in page  # the input, kept in the form
        await database.run(lambda c: c.execute("PRAGMA max_page_count = 1073741823"))
        accepted = await browser.post(f"{base}/workflows/echo/submit", data=form, allow_redirects=False)
        assert accepted.status == 303 and accepted.headers["Location"].startswith("/tasks/")


async def test_a_step_s_row_says_which_fallback_answered_and_when_its_retry_is_due(console, api):
    retry = {"max_attempts": 2, "initial_backoff": "60s", "max_backoff": "60s"}
    flaky = {"protocol": "flaky", "input": "{'failures': 1}", "retry": retry}
    await api.create_workflow({"workflow_id": "backing-off", "root": {"id": "s", "step": flaky}})
    falling = {"protocol": "fail", "retry": {"max_attempts": 1}, "fallbacks": [{"protocol": "echo"}]}
    await api.create_workflow({"workflow_id": "falling-back", "root": {"id": "s", "step": falling}})
    waiting = await api.submit("backing-off")
    async with asyncio.timeout(10):  # a 60 s backoff parks the task
        while (await api.get(waiting.task_id, steps=False)).status != task_pb2.TASK_STATUS_WAITING:
            await asyncio.sleep(0.05)
    fell_back = await api.submit("falling-back")
    async with asyncio.timeout(10):
        while (await api.get(fell_back.task_id, steps=False)).status != task_pb2.TASK_STATUS_COMPLETED:
            await asyncio.sleep(0.05)
    async with aiohttp.ClientSession() as browser:
        page = await (await browser.get(f"{console.console.url}/tasks/{waiting.task_id}")).text()
        due = (await api.get(waiting.task_id)).steps[0].retry_time.ToDatetime().isoformat(timespec="milliseconds")
        assert f'retry 2 at <time datetime="{due}Z">' in page
        page = await (await browser.get(f"{console.console.url}/tasks/{fell_back.task_id}")).text()
        assert '<span class="dim fallback">via echo</span>' in page
    await api.cancel(waiting.task_id)


async def test_the_tasks_page_finds_tasks_by_a_label_and_each_label_links_to_its_tasks(console, api):
    await api.create_workflow({"workflow_id": "tagged", "root": {"id": "s", "step": {"protocol": "echo"}}})
    ones = [await api.submit("tagged", {}, labels={"order": "A-1", "note": "<b>x</b>"}) for _ in range(2)]
    other = await api.submit("tagged", {}, labels={"order": "B-2"})
    async with aiohttp.ClientSession() as browser:
        page = await (await browser.get(f"{console.console.url}/tasks", params={"label": "order=A-1"})).text()
        assert all(t.task_id in page for t in ones) and other.task_id not in page
        assert 'data-label="order=A-1"' in page and "with the label" in page
        assert '<span class="count" data-count="completed"></span>' in page  # no counts by label
        assert 'href="/tasks?label=order%3DA-1"' in page  # each label finds its tasks
        assert "&lt;b&gt;x&lt;/b&gt;" in page and "<b>x</b>" not in page  # shown as text
        everything = await (await browser.get(f"{console.console.url}/tasks")).text()
        assert all(t.task_id in everything for t in (*ones, other)) and 'data-label=""' in everything
        bad = await browser.get(f"{console.console.url}/tasks", params={"label": "order"})
        assert bad.status == 400 and "a label filter is KEY=VALUE" in await bad.text()
        refused = await browser.get(f"{console.console.url}/tasks", params={"label": "a key=v"})
        assert refused.status == 400 and "labels" in await refused.text()


async def test_rerun_these_takes_only_finished_statuses_a_label_and_a_whole_version(console, api):
    await api.create_workflow({"workflow_id": "echo", "root": {"id": "e", "step": {"protocol": "echo"}}})
    done = await api.submit("echo", {"a": 1})
    await api.result(done.task_id, timeout=30)
    url = f"{console.console.url}/tasks/rerun"
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        token = csrf_of(await (await browser.get(f"{console.console.url}/tasks?status=completed")).text())
        unasked = await browser.post(url, data={"status": "completed"}, allow_redirects=False)
        assert unasked.status == 403
        for form, said in (
            ({"status": "running"}, "choose only the statuses completed, failed, cancelled"),
            ({}, "choose only the statuses"),
            ({"status": "completed", "label": "no-equals"}, "KEY=VALUE"),
            ({"status": "completed", "version": "-1"}, "version"),
            ({"status": "completed", "version": "9" * 30}, "version"),
        ):
            refused = await browser.post(url, data={**form, "csrf": token}, allow_redirects=False)
            assert refused.status == 400 and said in await refused.text(), form
        assert not (await api.get(done.task_id)).reruns  # nothing refused was rerun
        once = await browser.post(
            url, data={"status": "completed", "workflow": "echo", "csrf": token}, allow_redirects=False
        )
        assert once.status == 303 and "rerun=1&already=0&refused=0" in once.headers["Location"]
        reruns = list((await api.get(done.task_id)).reruns)
        assert len(reruns) == 1
        await api.result(reruns[0], timeout=30)
        again = await browser.post(
            url, data={"status": "completed", "workflow": "echo", "csrf": token}, allow_redirects=False
        )
        # the rerun completed too, so it is selected now (once); the original was rerun already
        assert again.status == 303 and "rerun=1&already=1&refused=0" in again.headers["Location"]
        shown = await (await browser.get(f"{console.console.url}{again.headers['Location']}")).text()
        assert "Rerun 1 task(s); 1 had been rerun already." in " ".join(shown.split())


async def test_cancel_these_takes_only_unfinished_statuses_and_cancels_the_filtered_tasks(console, api):
    waits = {"id": "root", "sequence": {"children": [{"id": "w", "wait": {"signal": "go"}}]}}
    await api.create_workflow({"workflow_id": "held", "root": waits})
    held = (await api.submit("held", labels={"k": "v"})).task_id
    url = f"{console.console.url}/tasks/cancel"
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        token = csrf_of(await (await browser.get(f"{console.console.url}/tasks?status=waiting")).text())
        assert (await browser.post(url, data={"status": "waiting"}, allow_redirects=False)).status == 403
        for form, said in (
            ({"status": "completed"}, "choose only the statuses pending, running, waiting"),
            ({"status": "nonsense"}, "choose only the statuses"),
            ({"status": "waiting", "label": "k"}, "KEY=VALUE"),
        ):
            refused = await browser.post(url, data={**form, "csrf": token}, allow_redirects=False)
            assert refused.status == 400 and said in await refused.text(), form
        assert (await api.get(held, steps=False)).status != task_pb2.TASK_STATUS_CANCELLED
        done = await browser.post(
            url,
            data=[
                ("status", "pending"),
                ("status", "running"),
                ("status", "waiting"),
                ("label", "k=v"),
                ("csrf", token),
            ],
            allow_redirects=False,
        )
        assert done.status == 303 and "cancelled=1&finished=0&gone=0" in done.headers["Location"]
        assert (await api.get(held, steps=False)).status == task_pb2.TASK_STATUS_CANCELLED


async def test_a_workflow_page_says_which_workflows_it_runs_and_which_have_moved_on(console, api):
    for tag in ("v1", "v2"):
        await api.create_workflow(
            {"workflow_id": "part", "root": {"id": "p", "step": {"protocol": "echo", "input": f"{{'t': '{tag}'}}"}}}
        )
        await api.create_workflow({"workflow_id": "gone", "root": {"id": "g", "step": {"protocol": "echo"}}})
    subs = [
        {"id": "a", "subworkflow": {"workflow_id": "part", "version": 1}},
        {"id": "b", "subworkflow": {"workflow_id": "gone"}},
    ]
    await api.create_workflow({"workflow_id": "whole", "root": {"id": "r", "sequence": {"children": subs}}})
    await api.delete_workflow("gone")
    async with aiohttp.ClientSession() as browser:
        page = await (await browser.get(f"{console.console.url}/workflows/whole")).text()
    start = page.index(">", page.index('id="runs"')) + 1
    runs = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", page[start : page.index("</p>", start)])).strip()
    assert runs == "Runs: part v1 (latest: v2) · gone v2 (deleted since)"
    assert 'href="/workflows/part?version=1"' in page


async def test_the_upgrade_button_stores_a_version_running_the_latest_or_says_why_not(console, api):
    part = {"workflow_id": "piece", "root": {"id": "p", "step": {"protocol": "echo"}}}
    await api.create_workflow(part)
    await api.create_workflow({"workflow_id": "lost", "root": {"id": "l", "step": {"protocol": "echo"}}})
    await api.create_workflow({"workflow_id": "uses", "root": {"id": "u", "subworkflow": {"workflow_id": "piece"}}})
    both = [{"id": "a", "subworkflow": {"workflow_id": "piece"}}, {"id": "b", "subworkflow": {"workflow_id": "lost"}}]
    await api.create_workflow({"workflow_id": "needs-lost", "root": {"id": "r", "sequence": {"children": both}}})
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        page = await (await browser.get(f"{console.console.url}/workflows/uses")).text()
        assert 'id="upgrade"' not in page  # nothing has moved on
        await api.create_workflow(part)  # piece v2
        await api.delete_workflow("lost")
        page = await (await browser.get(f"{console.console.url}/workflows/uses")).text()
        assert 'id="upgrade"' in page
        clicked = await browser.post(f"{console.console.url}/workflows/uses/upgrade", data={"csrf": csrf_of(page)})
        assert clicked.status == 200 and str(clicked.url).endswith("/workflows/uses?version=2&upgraded=1")
        shown = await clicked.text()
        assert "stored from v1: it runs the latest version of each workflow it runs" in shown
        assert 'id="upgrade"' not in shown and "piece v2" in shown
        assert (await api.get_workflow("uses")).root.subworkflow.version == 2

        page = await (await browser.get(f"{console.console.url}/workflows/needs-lost")).text()
        clicked = await browser.post(
            f"{console.console.url}/workflows/needs-lost/upgrade", data={"csrf": csrf_of(page)}
        )
        refused = await clicked.text()
        assert "not upgraded: " in refused and "&#39;lost&#39; version 1 was deleted" in refused
        assert (await api.get_workflow("needs-lost")).version == 1
        forged = await browser.post(f"{console.console.url}/workflows/uses/upgrade", data={"csrf": "0" * 64})
        assert forged.status == 403


async def test_a_deleted_version_s_page_says_so_and_offers_no_submit_and_its_tasks_still_show(console, api):
    await api.create_workflow({"workflow_id": "old", "root": {"id": "o", "step": {"protocol": "echo"}}})
    task = await api.submit("old", {"who": "ada"})
    await api.delete_workflow("old")
    async with aiohttp.ClientSession() as browser:
        page = await (await browser.get(f"{console.console.url}/workflows/old?version=1")).text()
        assert 'id="deleted-notice"' in page and 'id="submit-form"' not in page
        assert "no task starts from this version any more" in page
        shown = await browser.get(f"{console.console.url}/tasks/{task.task_id}")
        assert shown.status == 200 and 'href="/workflows/old?version=1"' in await shown.text()
        await api.create_workflow({"workflow_id": "old", "root": {"id": "n", "step": {"protocol": "echo"}}})
        page = await (await browser.get(f"{console.console.url}/workflows/old")).text()  # v2, not deleted
        assert 'id="deleted-notice"' not in page and 'id="submit-form"' in page
        assert 'href="/workflows/old?version=1"' in page  # the deleted one is still listed, for its tasks


async def test_a_task_s_page_says_by_when_it_must_start(console, api):
    await api.create_workflow({"workflow_id": "timely", "root": {"id": "t", "step": {"protocol": "echo"}}})
    task = await api.submit("timely", {"who": "ada"}, queue_timeout=90)
    assert task.queue_deadline.ToSeconds() - task.create_time.ToSeconds() in (89, 90, 91)
    async with aiohttp.ClientSession() as browser:
        page = await (await browser.get(f"{console.console.url}/tasks/{task.task_id}")).text()
    shown = page[page.index('id="queue-deadline">') :]
    assert shown.startswith(f'id="queue-deadline">{task.queue_deadline.ToDatetime().isoformat()[:19]}')


async def test_the_submit_form_says_what_an_empty_field_stands_for(console, api):
    schema = {
        "type": "object",
        "required": ["topic"],
        "properties": {
            "topic": {"type": "string"},
            "words": {"type": "integer", "default": 200},
            "tone": {"enum": ["formal", "friendly"], "default": "friendly"},
        },
    }
    root = {"id": "s", "step": {"protocol": "echo"}}
    await api.create_workflow(
        {"workflow_id": "defaulted", "input_schema": schema, "fill_input_defaults": True, "root": root}
    )
    async with aiohttp.ClientSession() as browser:
        page = await (await browser.get(f"{console.console.url}/workflows/defaulted")).text()
    assert 'name="field.words" value="" placeholder="200"' in page
    assert "default: <code>200</code>" in page and "default: <code>&#34;friendly&#34;</code>" in page
    assert page.count('class="dim field-default"') == 2  # the topic has none


async def test_a_step_waiting_for_an_event_is_answered_by_publishing_it_from_the_task_page(console, api):
    wait = {
        "event": "invoice.paid",
        "key": "input.invoice",
        "prompt": "'invoice ' + input.invoice",
        "condition": "event.data.amount > 0 && input.invoice != '<b>'",
    }
    await api.create_workflow({"workflow_id": "invoice", "root": {"id": "paid", "wait": wait}})
    task_id = (await api.submit("invoice", {"invoice": "inv-7"})).task_id
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        async with asyncio.timeout(10):
            while "waits for event" not in (
                page := await (await browser.get(f"{console.console.url}/tasks/{task_id}")).text()
            ):
                await asyncio.sleep(0.05)
        assert 'action="/events/publish"' in page and 'name="key" value="inv-7"' in page
        assert "for event invoice.paid with key inv-7" in page  # the step's row says what it waits for
        assert "event.data.amount &gt; 0 &amp;&amp; input.invoice != &#39;&lt;b&gt;&#39;</span> holds" in page
        answer = await browser.post(
            f"{console.console.url}/events/publish",
            data={"name": "invoice.paid", "key": "inv-7", "data": '{"amount": 30}', "csrf": csrf_of(page)},
        )
        shown = await answer.text()
        assert answer.status == 200 and 'id="woken"' in shown and task_id in shown
        assert "took it" in shown and "refused it" not in shown
    assert (await api.result(task_id, timeout=30)) == {"amount": 30}


async def test_a_workflow_s_triggers_are_shown_and_an_event_published_from_its_page(console, api):
    trigger = {"event": "doc.landed", "filter": "event.data.size > 0", "input": "{'n': event.data.size}"}
    await api.create_workflow(
        {"workflow_id": "on-doc", "root": {"id": "e", "step": {"protocol": "echo"}}, "triggers": [trigger]}
    )
    schema = {"type": "object", "required": ["never"]}
    await api.create_workflow(
        {"workflow_id": "on-doc-strict", "root": {"id": "e", "step": {"protocol": "echo"}}, "triggers": [trigger],
         "input_schema": schema}
    )  # fmt: skip
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        page = await (await browser.get(f"{console.console.url}/workflows/on-doc")).text()
        assert 'id="triggers"' in page and "event.data.size &gt; 0" in page and 'value="doc.landed"' in page
        answer = await browser.post(
            f"{console.console.url}/events/publish",
            data={"name": "doc.landed", "data": '{"size": 3}', "csrf": csrf_of(page)},
        )
        shown = await answer.text()
        assert answer.status == 200
        task_id = re.search(r'href="/tasks/([0-9a-f]{32})"', shown).group(1)
        assert (await api.result(task_id, timeout=30)) == {"n": 3}
        assert 'id="refused"' in shown and "on-doc-strict" in shown  # refused for good: its schema
        bad = await browser.post(
            f"{console.console.url}/events/publish", data={"name": "doc.landed", "data": "[1]", "csrf": csrf_of(page)}
        )
        assert bad.status == 400 and "JSON object" in await bad.text()
        unnamed = await browser.post(
            f"{console.console.url}/events/publish", data={"name": "no spaces", "data": "{}", "csrf": csrf_of(page)}
        )
        assert unnamed.status == 400 and "cannot publish" in await unnamed.text()


async def test_a_composite_node_s_row_says_what_the_steps_under_it_used_in_all(console, api):
    used = "{'n': 1, 'usage': {'cost': 0.25, 'prompt_tokens': 10}}"
    metered = [{"id": f"m{i}", "step": {"protocol": "metered", "input": used}} for i in range(3)]
    root = {"id": "root", "sequence": {"children": [{"id": "p", "parallel": {"children": metered[:2]}}, metered[2]]}}
    await api.create_workflow({"workflow_id": "priced", "root": root})
    task_id = (await api.submit("priced", {})).task_id
    await api.result(task_id, timeout=30)
    async with aiohttp.ClientSession() as browser:
        page = await (await browser.get(f"{console.console.url}/tasks/{task_id}")).text()
    below = re.findall(r'class="dim mono subtree-usage"[^>]*>in all: ([^<]*)<', page)
    assert below == ["cost 0.75, prompt_tokens 30", "cost 0.5, prompt_tokens 20"]  # root, then root/p


async def test_a_task_s_page_says_it_was_cancelled_and_cleaned_up(console, api):
    root = {
        "id": "r",
        "recover": {
            "on_cancel": True,
            "body": {"id": "slow", "step": {"protocol": "sleep", "input": "{'ms': 10000}"}},
            "handler": {"id": "undo", "step": {"protocol": "echo"}},
        },
    }
    await api.create_workflow({"workflow_id": "undoable", "root": root})
    task = await api.submit("undoable", {})
    async for event in api.watch(task.task_id):
        if event.step_path == "r/slow":
            break
    cancelled = await api.cancel(task.task_id, "<b>stop</b>")
    assert cancelled.status == task_pb2.TASK_STATUS_CANCELLED
    async with aiohttp.ClientSession() as browser:
        page = await (await browser.get(f"{console.console.url}/tasks/{task.task_id}")).text()
        graph = await (await browser.get(f"{console.console.url}/workflows/undoable")).text()
    shown = page[page.index('id="cancel-request">') :]
    shown = shown[: shown.index("</dd>")]
    assert cancelled.cancel_request.time.ToDatetime().isoformat()[:19] in shown
    assert "(&lt;b&gt;stop&lt;/b&gt;): cleaned up (done)" in shown
    assert "or cancel" in graph
