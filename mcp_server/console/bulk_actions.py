"""The console's bulk actions: the tasks page's "all, in the background" buttons start one
(StartBulkAction on the list's filter, fixed as of the click), and the bulk actions page lists
them with their progress and aborts a running one."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from mcp_sdk.bulk_actions import task_selection
from mcp_sdk.proto import bulk_pb2, task_pb2
from mcp_server.console.base import api, render
from mcp_server.console.bulk import FINISHED, UNFINISHED, posted_filter


def _time(stamp: Any) -> str:
    return str(stamp.ToDatetime().isoformat(timespec="seconds")) + "Z"


def action_view(action: bulk_pb2.BulkAction) -> dict[str, Any]:
    selection = action.selection
    chosen = [f"{len(selection.task_ids)} task(s) by id"] if selection.task_ids else []
    chosen += [s.removeprefix("TASK_STATUS_").lower() for s in map(task_pb2.TaskStatus.Name, selection.statuses)]
    chosen += [f"workflow {selection.workflow_id}"] if selection.workflow_id else []
    chosen += [f"owner {selection.owner}"] if selection.owner else []
    chosen += [f"{key}={value}" for key, value in sorted(selection.labels.items())]
    if selection.HasField("created_after"):
        chosen.append(f"from {_time(selection.created_after)}")
    if selection.HasField("created_before"):
        chosen.append(f"before {_time(selection.created_before)}")
    return {
        "action_id": action.action_id,
        "kind": bulk_pb2.BulkActionKind.Name(action.kind).removeprefix("BULK_ACTION_KIND_").lower(),
        "version": action.workflow_version,
        "from_step": action.from_step_path,
        "state": bulk_pb2.BulkActionState.Name(action.state).removeprefix("BULK_ACTION_STATE_").lower(),
        "selection": ", ".join(chosen),
        "matched": action.matched,
        "succeeded": action.succeeded,
        "skipped": action.skipped,
        "failed": action.failed,
        "failures": [{"task_id": f.task_id, "message": f.message[:300]} for f in action.failures],
        "owner": action.owner,
        "created": _time(action.create_time),
        "abort_reason": action.abort_reason,
    }


async def bulk_actions(request: web.Request) -> web.StreamResponse:
    page = await api(request).list_bulk_actions(page_size=100)
    views = [action_view(a) for a in page.bulk_actions]
    running = any(v["state"] == "running" for v in views)
    return render(request, "bulk_actions.html", {"actions": views, "running": running})


async def abort(request: web.Request) -> web.StreamResponse:
    """POST /bulk/{action_id}/abort, then back to the list."""
    action_id = request.match_info["action_id"]
    await api(request).abort_bulk_action(action_id, "aborted from the console")
    return web.Response(status=303, headers={"Location": f"/bulk#{action_id}"})


async def rerun_all(request: web.Request) -> web.StreamResponse:
    """POST /tasks/rerun-all: a bulk action rerunning every task of the posted filter (on the posted
    version, 0: each task's own), then to the bulk actions page."""
    chosen, posted = await posted_filter(request, FINISHED, "rerun all")
    version_text = str(posted.get("version", "") or "0").strip()
    if not version_text.isdigit() or int(version_text) >= 2**63:
        raise web.HTTPBadRequest(text=f"version: a whole number of at least 0, not {version_text[:40]!r}")
    selection = task_selection(statuses=chosen.status_names, workflow_id=chosen.workflow_id, labels=chosen.labels)
    action = await api(request).start_bulk_action("rerun", selection, workflow_version=int(version_text))
    return web.Response(status=303, headers={"Location": f"/bulk#{action.action_id}"})


async def cancel_all(request: web.Request) -> web.StreamResponse:
    """POST /tasks/cancel-all: a bulk action cancelling every task of the posted filter."""
    chosen, _ = await posted_filter(request, UNFINISHED, "cancel all")
    selection = task_selection(statuses=chosen.status_names, workflow_id=chosen.workflow_id, labels=chosen.labels)
    action = await api(request).start_bulk_action("cancel", selection, reason="cancelled from the console")
    return web.Response(status=303, headers={"Location": f"/bulk#{action.action_id}"})
