"""The console's POST forms given what a hostile or careless browser sends: random, missing,
repeated and unknown fields, values of every odd shape (huge, control characters, lone
surrogates' bytes, numbers past every range, JSON that nests too deep), odd ids and actions in
the path. Every answer is a page or a redirect, never a 500, and the console and the server
still work after."""

from __future__ import annotations

import json
import random
from typing import Any

import aiohttp
import pytest

from tests.console.test_console_http import csrf_of

pytestmark = pytest.mark.asyncio
ROUNDS = 150
FIELDS = (
    "input",
    "priority",
    "labels",
    "version",
    "path",
    "step_path",
    "signal",
    "json",
    "field.note",
    "field.ok",
    "field.count",
    "token",
    "next",
    "csrf2",
    "",
)
WAITING = {
    "workflow_id": "asks",
    "root": {
        "id": "root",
        "sequence": {
            "children": [
                {"id": "first", "step": {"protocol": "echo"}},
                {
                    "id": "approve",
                    "wait": {
                        "signal": "approval",
                        "schema": {
                            "type": "object",
                            "properties": {
                                "ok": {"type": "boolean"},
                                "note": {"type": "string", "pattern": "^[a-z ]*$"},
                                "count": {"type": "integer"},
                            },
                        },
                    },
                },
            ]
        },
    },
}


def odd_value(rng: random.Random) -> str:
    """One value of the shapes forms go wrong with."""
    depth = rng.choice((5, 40, 200))
    choices: list[Any] = [
        "",
        " ",
        "0",
        "-1",
        "1e309",
        "NaN",
        "-9223372036854775809",
        "99999999999999999999999",
        "²",
        "٣",
        "true",
        "null",
        "{}",
        "[]",
        '{"a": 1}',
        "{" * depth + "}" * depth,
        json.dumps({"text": "x" * rng.choice((10, 100_000))}),
        "\x00\x01\x1b[31m",
        "a=b\nc=d\n=e\nf",
        "k=v\n" * rng.choice((1, 500)),
        "root/first",
        "root/approve",
        "root/nowhere[3]#9",
        "../../etc/passwd",
        "approval",
        "x" * rng.choice((200, 70_000)),
        "\u202e\ufeff\U0001f600",
        "%00%2F",
    ]
    return str(rng.choice(choices))


def odd_id(rng: random.Random, known: list[str]) -> str:
    return str(rng.choice([*known, "nope", "x" * 300, "%2e%2e", "%E2%80%AE", "a%2Fb", "%00", "-", "0"]))


async def test_random_forms_never_answer_500_and_the_console_still_works(console, api):
    await api.create_workflow({"workflow_id": "echo", "root": {"id": "e", "step": {"protocol": "echo"}}})
    await api.create_workflow(WAITING)
    done = await api.submit("echo", {"a": 1})
    waiting = await api.submit("asks", {"a": 1})
    await api.create_schedule("nightly", "echo", {"a": 1}, cron=["0 3 * * *"])
    tasks = [done.task_id, waiting.task_id]
    base = console.console.url
    rng = random.Random(20261204)
    statuses: dict[int, int] = {}
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        token = csrf_of(await (await browser.get(f"{base}/workflows/echo")).text())
        for round_number in range(ROUNDS):
            route = rng.choice(
                [
                    f"/workflows/{odd_id(rng, ['echo', 'asks'])}/submit",
                    f"/tasks/{odd_id(rng, tasks)}/signal",
                    f"/tasks/{odd_id(rng, tasks)}/rerun",
                    f"/tasks/{odd_id(rng, tasks)}/cancel",
                    f"/tasks/{odd_id(rng, [waiting.task_id])}/delete",  # not `done`: it is read at the end
                    f"/schedules/{odd_id(rng, ['nightly'])}/{rng.choice(['pause', 'unpause', 'trigger', 'x', '%2F'])}",
                    "/login",
                ]
            )
            form = aiohttp.FormData()
            for _ in range(rng.randint(0, 6)):
                form.add_field(rng.choice(FIELDS), odd_value(rng))
            if rng.random() < 0.15:
                form.add_field("upload", b"\xff\xfe" * 100, filename="x.bin")
            form.add_field("csrf", token)
            answer = await browser.post(f"{base}{route}", data=form, allow_redirects=False)
            body = await answer.text(errors="replace")
            statuses[answer.status] = statuses.get(answer.status, 0) + 1
            assert answer.status < 500, (round_number, route, answer.status, body[:500])
            if route == "/login":  # a sign-in (any token, on this server) makes a new CSRF token
                token = csrf_of(await (await browser.get(f"{base}/workflows/echo")).text())
        home = await browser.get(f"{base}/tasks")
        assert home.status == 200
    for cookie in ("mcp_token=%01x", "mcp_token=\u00e9t\u00e9", "mcp_token=" + "x" * 3000, "mcp_seed=zz; mcp_token="):
        async with aiohttp.ClientSession() as forged:  # a cookie no sign-in set: anonymous
            page = await forged.get(f"{base}/tasks", headers={"Cookie": cookie.encode().decode("latin-1")})
            assert page.status == 200, (cookie, page.status)
    assert (await api.get(done.task_id)).task_id == done.task_id
    assert len(statuses) > 4 and statuses.get(403, 0) < ROUNDS // 10, statuses  # the forms got past the guard
