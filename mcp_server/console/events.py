"""The console's events: a workflow page lists the events that start it and publishes one (what
`mcp event publish` does), and the answer lists the tasks it started and the workflows that
refused it."""

from __future__ import annotations

from typing import Any

import grpc
from aiohttp import web

from mcp_sdk.errors import McpError
from mcp_sdk.proto import workflow_pb2
from mcp_sdk.values import strict_json
from mcp_server.console.base import api, render


def triggers_of(workflow: workflow_pb2.Workflow) -> list[dict[str, str]]:
    """What the workflow page shows of a version's triggers."""
    return [{"event": t.event, "filter": t.filter, "input": t.input} for t in workflow.triggers]


async def publish(request: web.Request) -> web.StreamResponse:
    """POST /events/publish: publish the posted event, then show what it started."""
    posted = {name: str(value) for name, value in (await request.post()).items()}
    name = posted.get("name", "").strip()
    try:
        data = strict_json(posted.get("data", "").strip() or "{}")
    except ValueError as exc:
        raise web.HTTPBadRequest(text=f"data: not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise web.HTTPBadRequest(text='data: must be a JSON object, such as {"text": "hello"}')
    try:
        reply = await api(request).publish_event(name, data, key=posted.get("key", ""))
    except McpError as error:
        if error.code != grpc.StatusCode.INVALID_ARGUMENT:
            raise
        raise web.HTTPBadRequest(text=f"cannot publish: {error.message}") from None
    started: list[dict[str, Any]] = [
        {"workflow_id": t.workflow_id, "version": t.workflow_version, "task_id": t.task_id} for t in reply.tasks
    ]
    refused = [{"workflow_id": r.workflow_id, "message": r.status.message} for r in reply.refused]
    woken = [{"task_id": w.task_id, "path": w.step_path} for w in reply.woken]
    refused_waits = [
        {"task_id": r.task_id, "path": r.step_path, "message": r.status.message} for r in reply.refused_waits
    ]
    context = {
        "name": name,
        "event_id": reply.event_id,
        "started": started,
        "refused": refused,
        "woken": woken,
        "refused_waits": refused_waits,
        "cancelled": list(reply.cancelled),
    }
    return render(request, "published.html", context)
