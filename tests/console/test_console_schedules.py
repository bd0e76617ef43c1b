"""The console's schedules page over HTTP: schedules listed with their next fire times and
recent runs; pause, unpause, trigger and delete from its buttons (with the CSRF token)."""

from __future__ import annotations

import asyncio
import re

import aiohttp
import pytest

from tests.console.test_console_http import csrf_of

pytestmark = pytest.mark.asyncio


async def test_the_schedules_page_lists_and_acts_on_schedules(console, api):
    await api.create_workflow({"workflow_id": "echo", "root": {"id": "e", "step": {"protocol": "echo"}}})
    await api.create_schedule("morning", "echo", {"a": 1}, cron=["0 9 * * *"], time_zone="Europe/Paris")
    base = console.console.url
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        page = await (await browser.get(f"{base}/schedules")).text()
        assert 'data-schedule="morning"' in page and "0 9 * * * (Europe/Paris)" in page
        assert len(re.findall(r"\d{4}-\d\d-\d\dT0[78]:00:00Z<br>", page)) == 5  # 09:00 Paris, in UTC
        token = csrf_of(page)
        refused = await browser.post(f"{base}/schedules/morning/pause", allow_redirects=False)
        assert refused.status == 403
        paused = await browser.post(f"{base}/schedules/morning/pause", data={"csrf": token}, allow_redirects=False)
        assert paused.status == 303 and (await api.get_schedule("morning")).paused
        page = await (await browser.get(f"{base}/schedules")).text()
        assert "paused from the console" in page and 'data-action="unpause"' in page
        triggered = await browser.post(f"{base}/schedules/morning/trigger", data={"csrf": token}, allow_redirects=False)
        assert triggered.status == 303 and triggered.headers["Location"].startswith("/tasks/")
        task_id = triggered.headers["Location"].removeprefix("/tasks/")
        page = await (await browser.get(f"{base}/schedules")).text()
        assert f'href="/tasks/{task_id}"' in page
        await api.result(task_id, timeout=30)
        assert await api.delete(task_id)  # the run stays listed, said to be gone
        page = await (await browser.get(f"{base}/schedules")).text()
        assert f'href="/tasks/{task_id}"' in page and '<span class="badge gone">gone</span>' in page
        unpaused = await browser.post(f"{base}/schedules/morning/unpause", data={"csrf": token}, allow_redirects=False)
        assert unpaused.status == 303 and not (await api.get_schedule("morning")).paused
        deleted = await browser.post(f"{base}/schedules/morning/delete", data={"csrf": token}, allow_redirects=False)
        assert deleted.status == 303 and await api.list_schedules() == []
        missing = await browser.post(f"{base}/schedules/morning/delete", data={"csrf": token}, allow_redirects=False)
        assert missing.status == 404


async def test_a_fire_time_the_server_refused_is_shown_with_why(console, api):
    """The workflow's newer version declares an input the schedule's does not fit."""
    await api.create_workflow({"workflow_id": "strict-echo", "root": {"id": "e", "step": {"protocol": "echo"}}})
    await api.create_schedule("every-second", "strict-echo", {"a": 1}, every=[1.0])
    strict = {"type": "object", "required": ["b"]}
    await api.create_workflow(
        {"workflow_id": "strict-echo", "root": {"id": "e", "step": {"protocol": "echo"}}, "input_schema": strict}
    )
    async with asyncio.timeout(10):
        while (await api.get_schedule("every-second")).info.refused == 0:
            await asyncio.sleep(0.1)
    async with aiohttp.ClientSession() as browser:
        page = await (await browser.get(f"{console.console.url}/schedules")).text()
    assert re.search(r'<span class="refused">\d+ refused</span>', page)
    assert "refused: INPUT_REJECTED: input_data does not fit the input schema" in page
    await api.delete_schedule("every-second")
