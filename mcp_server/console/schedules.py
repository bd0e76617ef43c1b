"""The console's schedules page: every schedule with its next fire times and recent runs, and
the buttons to pause, unpause, trigger and delete one."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from mcp_sdk.proto import schedule_pb2, task_pb2
from mcp_server.console.base import api, render


def _time(stamp: Any) -> str:
    return str(stamp.ToDatetime().isoformat(timespec="seconds")) + "Z"


def schedule_view(s: schedule_pb2.Schedule) -> dict[str, Any]:
    spec = s.spec
    when = [*spec.cron, *(f"every {e.ToTimedelta()}" for e in spec.every)]
    if spec.HasField("run_at"):
        when.append(f"at {_time(spec.run_at)}")
    return {
        "schedule_id": s.schedule_id,
        "workflow_id": s.action.workflow_id,
        "when": ", ".join(when) + (f" ({spec.time_zone})" if spec.time_zone else ""),
        "overlap": schedule_pb2.OverlapPolicy.Name(s.overlap or schedule_pb2.OVERLAP_POLICY_SKIP)
        .removeprefix("OVERLAP_POLICY_")
        .lower(),
        "paused": s.paused,
        "note": s.note,
        "owner": s.owner,
        "runs": s.info.runs,
        "skipped": s.info.skipped,
        "missed": s.info.missed,
        "refused": s.info.refused,
        "next": [_time(t) for t in s.info.next_fire_times],
        "recent": [
            {
                "fire_time": _time(r.fire_time),
                "task_id": r.task_id,
                "status": (
                    task_pb2.TaskStatus.Name(r.status).removeprefix("TASK_STATUS_").lower() if r.status else "gone"
                )
                if r.task_id
                else "",
                "refusal": r.refusal,
            }
            for r in s.info.recent_runs
        ],
    }


async def schedules(request: web.Request) -> web.StreamResponse:
    listed = await api(request).list_schedules()
    return render(request, "schedules.html", {"schedules": [schedule_view(s) for s in listed]})


async def act(request: web.Request) -> web.StreamResponse:
    """POST /schedules/{schedule_id}/{action}: pause, unpause, trigger or delete, then back to the list
    (a trigger goes to the task it started)."""
    schedule_id = request.match_info["schedule_id"]
    action = request.match_info["action"]
    client = api(request)
    if action == "pause":
        await client.pause_schedule(schedule_id, "paused from the console")
    elif action == "unpause":
        await client.unpause_schedule(schedule_id)
    elif action == "trigger":
        task = await client.trigger_schedule(schedule_id)
        return web.Response(status=303, headers={"Location": f"/tasks/{task.task_id}"})
    elif action == "delete":
        await client.delete_schedule(schedule_id)
    else:
        raise web.HTTPNotFound(text=f"no action {action!r} on schedules")
    return web.Response(status=303, headers={"Location": "/schedules"})
