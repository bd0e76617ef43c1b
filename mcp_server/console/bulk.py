"""The tasks page's buttons for every task its filter shows, a batch per click: "rerun these" on
finished tasks (the SDK's rerun_tasks: a second click starts no second rerun of a task) and
"cancel these" on unfinished ones (cancel_tasks; the page asks first)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from mcp_server.console.base import api

FINISHED = ("completed", "failed", "cancelled")
UNFINISHED = ("pending", "running", "waiting")
BATCH = 100  # tasks per click: a click answers within seconds; the next click goes on


@dataclass(frozen=True)
class Filter:
    """The task list's filter, as the button posted it."""

    statuses: list[str]
    workflow_id: str
    label: str

    @property
    def labels(self) -> dict[str, str]:
        key, _, value = self.label.partition("=")
        return {key: value} if self.label else {}

    @property
    def status_names(self) -> list[str]:
        return [f"TASK_STATUS_{s.upper()}" for s in self.statuses]

    def back(self, **outcome: str) -> web.Response:
        """303 to the filtered list, with what the click did for it to say."""
        query = [("status", s) for s in self.statuses] + [("workflow", self.workflow_id), ("label", self.label)]
        return web.Response(status=303, headers={"Location": "/tasks?" + urlencode(query + list(outcome.items()))})


def offered(statuses: list[str], allowed: tuple[str, ...]) -> bool:
    """Whether the page offers a button: a filter on `allowed` statuses only."""
    return bool(statuses) and all(status in allowed for status in statuses)


async def posted_filter(request: web.Request, allowed: tuple[str, ...], button: str) -> tuple[Filter, Any]:
    """The posted filter (400 for statuses outside `allowed` or a label not KEY=VALUE), and the form."""
    posted = await request.post()
    statuses = [str(s).lower() for s in posted.getall("status", [])]
    if not offered(statuses, allowed):
        raise web.HTTPBadRequest(text=f"{button}: choose only the statuses {', '.join(allowed)}")
    label = str(posted.get("label", "")).strip()
    key, equals, _ = label.partition("=")
    if label and not (key and equals):
        raise web.HTTPBadRequest(text=f"a label filter is KEY=VALUE, not {label[:80]!r}")
    return Filter(statuses, str(posted.get("workflow", "")).strip(), label), posted


async def rerun_filtered(request: web.Request) -> web.StreamResponse:
    """POST /tasks/rerun: rerun up to BATCH tasks of the posted filter that no click has rerun
    (on the posted version, 0: each task's own), then back to the filtered list, which says how
    many were rerun, had been rerun already, or were refused (and the first refusal)."""
    chosen, posted = await posted_filter(request, FINISHED, "rerun these")
    version_text = str(posted.get("version", "") or "0").strip()
    if not version_text.isdigit() or int(version_text) >= 2**63:
        raise web.HTTPBadRequest(text=f"version: a whole number of at least 0, not {version_text[:40]!r}")
    rerun = already = refused = 0
    problem = ""
    async for outcome in api(request).rerun_tasks(
        statuses=chosen.status_names,
        workflow_id=chosen.workflow_id,
        labels=chosen.labels,
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
    return chosen.back(
        version=version_text, rerun=str(rerun), already=str(already), refused=str(refused), problem=problem
    )


async def cancel_filtered(request: web.Request) -> web.StreamResponse:
    """POST /tasks/cancel: cancel up to BATCH unfinished tasks of the posted filter, then back to the
    filtered list, which says how many were cancelled or had finished meanwhile."""
    chosen, _ = await posted_filter(request, UNFINISHED, "cancel these")
    cancelled = finished = refused = 0
    async for outcome in api(request).cancel_tasks(
        statuses=chosen.status_names,
        workflow_id=chosen.workflow_id,
        labels=chosen.labels,
        reason="cancelled from the console's task list",
        limit=BATCH,
    ):
        if outcome.error is not None:
            refused += 1
        elif outcome.finished:
            finished += 1
        else:
            cancelled += 1
    return chosen.back(cancelled=str(cancelled), finished=str(finished), gone=str(refused))


def outcome_notice(query: dict[str, str]) -> dict[str, str] | None:
    """What the last click of "rerun these" did, read back from the list's query (None: no click)."""
    counts = _counts(query, ("rerun", "already", "refused"))
    if counts is None:
        return None
    version = query.get("version", "0")
    return {
        **counts,
        "problem": query.get("problem", "")[:300],
        "batch": str(BATCH),
        "version": version if version.isdigit() else "0",
    }


def cancel_notice(query: dict[str, str]) -> dict[str, str] | None:
    """What the last click of "cancel these" did (None: no click)."""
    counts = _counts(query, ("cancelled", "finished", "gone"))
    return None if counts is None else {**counts, "batch": str(BATCH)}


def _counts(query: dict[str, str], names: tuple[str, ...]) -> dict[str, str] | None:
    counts = {name: query.get(name, "") for name in names}
    return counts if all(count.isdigit() for count in counts.values()) else None
