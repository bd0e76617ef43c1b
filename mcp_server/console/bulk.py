"""The tasks page's "rerun these": every finished task its filter shows, once each, a batch per
click (the SDK's rerun_tasks: a second click starts no second rerun of a task)."""

from __future__ import annotations

from urllib.parse import urlencode

from aiohttp import web

from mcp_server.console.base import api
from mcp_server.console.present import TASK_STATUSES

FINISHED = ("completed", "failed", "cancelled")
BATCH = 100  # new reruns per click: a click answers within seconds; the next click goes on


def offered(statuses: list[str]) -> bool:
    """Whether the page offers the button: a filter on finished statuses only."""
    return bool(statuses) and all(status in FINISHED for status in statuses)


async def rerun_filtered(request: web.Request) -> web.StreamResponse:
    """POST /tasks/rerun: rerun up to BATCH tasks of the posted filter that no click has rerun
    (on the posted version, 0: each task's own), then back to the filtered list, which says how
    many were rerun, had been rerun already, or were refused (and the first refusal)."""
    posted = await request.post()
    statuses = [str(s).lower() for s in posted.getall("status", [])]
    if not offered(statuses) or any(s not in TASK_STATUSES for s in statuses):
        raise web.HTTPBadRequest(text="rerun these: choose only finished statuses (completed, failed, cancelled)")
    workflow_id = str(posted.get("workflow", "")).strip()
    label = str(posted.get("label", "")).strip()
    key, equals, value = label.partition("=")
    if label and not (key and equals):
        raise web.HTTPBadRequest(text=f"a label filter is KEY=VALUE, not {label[:80]!r}")
    version_text = str(posted.get("version", "") or "0").strip()
    if not version_text.isdigit() or int(version_text) >= 2**63:
        raise web.HTTPBadRequest(text=f"version: a whole number of at least 0, not {version_text[:40]!r}")
    rerun = already = refused = 0
    problem = ""
    async for outcome in api(request).rerun_tasks(
        statuses=[f"TASK_STATUS_{s.upper()}" for s in statuses],
        workflow_id=workflow_id,
        labels={key: value} if label else {},
        version=int(version_text),
        limit=BATCH,
    ):
        if outcome.error is not None:
            refused += 1
            problem = problem or f"{outcome.task_id}: {outcome.error.message}"[:300]
        elif outcome.created:
            rerun += 1
        else:
            already += 1
    query = [("status", s) for s in statuses] + [("workflow", workflow_id), ("label", label)]
    query += [
        ("version", version_text),
        ("rerun", str(rerun)),
        ("already", str(already)),
        ("refused", str(refused)),
        ("problem", problem),
    ]
    return web.Response(status=303, headers={"Location": "/tasks?" + urlencode(query)})


def outcome_notice(query: dict[str, str]) -> dict[str, str] | None:
    """What the last click of "rerun these" did, read back from the list's query (None: no click)."""
    if "rerun" not in query:
        return None
    counts = {name: query.get(name, "0") for name in ("rerun", "already", "refused")}
    if not all(count.isdigit() for count in counts.values()):
        return None
    version = query.get("version", "0")
    return {
        **counts,
        "problem": query.get("problem", "")[:300],
        "batch": str(BATCH),
        "version": version if version.isdigit() else "0",
    }
