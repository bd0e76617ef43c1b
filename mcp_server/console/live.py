"""What the pages' scripts fetch: a task's events as server-sent events (from WatchTask, resumed
after the browser's Last-Event-ID), live counts for the list, a step's values, the graph of a
run, and the protocols' state and rate limits."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import grpc
from aiohttp import web
from aiohttp_sse import sse_response

from mcp_sdk.client import Client
from mcp_sdk.errors import McpError
from mcp_sdk.proto import task_pb2
from mcp_server.cli.graph import task_graph, to_mermaid
from mcp_server.console.base import api
from mcp_server.console.present import (
    TASK_STATUSES,
    event_view,
    json_text,
    protocol_view,
    rate_limit_view,
    task_view,
)

COUNTS_EVERY_SECONDS = 2.0
# events in one page of the task's earlier events (the table shows the latest 1,000; see console.js)
EARLIER_PAGE = 1000
GRAPH_STEPS = 2000  # a run's graph shows at most this many steps (a graph of more is unreadable anyway)
FIELDS = {"output": task_pb2.VALUE_FIELD_OUTPUT, "input": task_pb2.VALUE_FIELD_INPUT}
PREVIEW_MAX_BYTES = 1024 * 1024


def _sequence(text: str | None) -> int:
    """A Last-Event-ID or ?after= as a sequence (nothing is after the largest one a uint64 holds)."""
    return min(int(text), 2**64 - 1) if text and text.isascii() and text.isdigit() else 0


async def task_events(request: web.Request) -> web.StreamResponse:
    """The task's events after the browser's Last-Event-ID (or ?after=N), then live ones, until
    the terminal event; an `end` event then tells the page to stop listening."""
    task_id = request.match_info["task_id"]
    after = _sequence(request.headers.get("Last-Event-ID")) or _sequence(request.query.get("after"))
    client = api(request)
    await client.get(task_id, steps=False)  # a task that is not there (or not yours) is a 404, not an empty stream
    async with sse_response(request, headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"}) as stream:
        with contextlib.suppress(ConnectionResetError):  # the page went away: nothing is wrong
            async for event in client.watch(task_id, after):
                await stream.send(json.dumps(event_view(event)), id=str(event.sequence), event="task")
            await stream.send("{}", event="end")
    return stream


async def earlier_events(request: web.Request) -> web.StreamResponse:
    """The events before ?before=B that the table does not show: the EARLIER_PAGE that end just
    before B (all of them when fewer), read with WatchTask from after the first one wanted."""
    task_id = request.match_info["task_id"]
    client = api(request)
    task = await client.get(task_id, steps=False)
    before = min(_sequence(request.query.get("before")), task.last_sequence + 1)  # no wait for events to come
    after = max(0, before - 1 - EARLIER_PAGE)
    events: list[dict[str, Any]] = []
    if before > 1:
        async for event in client.watch(task_id, after):
            if event.sequence >= before:
                break
            events.append(event_view(event))
            if event.sequence == before - 1:
                break
    return web.json_response({"events": events, "earlier": after})


async def counts(request: web.Request) -> web.StreamResponse:
    """Tasks per status (for ?workflow=), sent when they change, checked every two seconds."""
    workflow_id = request.query.get("workflow", "")
    client = api(request)
    async with sse_response(request, headers={"Cache-Control": "no-store"}) as stream:
        last: dict[str, int] = {}
        with contextlib.suppress(ConnectionResetError):
            while stream.is_connected():
                replies = await asyncio.gather(
                    *(
                        client.list_tasks(statuses=[f"TASK_STATUS_{s.upper()}"], workflow_id=workflow_id, page_size=1)
                        for s in TASK_STATUSES
                    )
                )
                now = {status: reply.total_size for status, reply in zip(TASK_STATUSES, replies)}
                if now != last:
                    await stream.send(json.dumps(now), event="counts")
                    last = now
                await asyncio.sleep(COUNTS_EVERY_SECONDS)
    return stream


async def step_values(request: web.Request) -> web.StreamResponse:
    """A step's input and output as previews (a value above 1 MB as its size, with the link to
    it): what the page shows when the step's event arrives."""
    task_id, path = request.match_info["task_id"], request.query.get("path", "")
    if not path:
        raise web.HTTPBadRequest(text="path names the step")
    client = api(request)
    values: dict[str, Any] = {"path": path}
    for name, field in FIELDS.items():
        try:
            values[name] = json_text(await client.read_value(task_id, path, field, max_bytes=PREVIEW_MAX_BYTES))
        except McpError as error:
            if error.reason == "VALUE_TOO_LARGE":
                values[name] = None
                values[f"{name}_ref"] = {"size_bytes": int(error.metadata.get("size_bytes", 0)), "field": name}
            elif (
                error.reason == "VALUE_NOT_FOUND"
            ):  # a step that failed has no output; a composite one may have neither
                values[name] = None
            else:
                raise
    return web.json_response(values)


async def whole_value(request: web.Request) -> web.StreamResponse:
    """Any value of the task whole, as JSON (a download: it may be large)."""
    task_id, path = request.match_info["task_id"], request.query.get("path", "")
    field = FIELDS.get(request.query.get("field", "output"))
    if field is None:
        raise web.HTTPBadRequest(text="field is input or output")
    value = await api(request).read_value(task_id, path, field)
    name = f"{task_id}-{(path or 'task').replace('/', '_')}-{request.query.get('field', 'output')}.json"
    return web.json_response(
        value,
        dumps=lambda v: json.dumps(v, indent=2, ensure_ascii=False),
        headers={"Content-Disposition": f'inline; filename="{name}"'},
    )


async def task_graph_text(request: web.Request) -> web.StreamResponse:
    """The path the task took, as Mermaid (the same graph as `mcp task graph`)."""
    task_id = request.match_info["task_id"]
    client = api(request)
    task = await client.get(task_id, steps=False)
    async for step in client.steps(task_id):
        task.steps.append(step)
        if len(task.steps) >= GRAPH_STEPS:
            break
    return web.Response(text=to_mermaid(task_graph(task)), content_type="text/plain")


async def task_json(request: web.Request) -> web.StreamResponse:
    """The task's header (status, times, result or its reference, error): the page's refresh at the end."""
    return web.json_response(task_view(await api(request).get(request.match_info["task_id"], steps=False)))


async def protocols_json(request: web.Request) -> web.StreamResponse:
    entries = [protocol_view(p) for p in await api(request).list_protocols()]
    return web.json_response(sorted(entries, key=lambda p: (p["name"], p["address"])))


async def rate_limits_json(request: web.Request) -> web.StreamResponse:
    """The rate limits, with what is available now ([] for a principal that may not see them)."""
    return web.json_response(await rate_limits_seen(api(request)) or [])


async def rate_limits_seen(client: Client) -> list[dict[str, Any]] | None:
    """The rate limits as the page shows them; None when this principal may not see them."""
    try:
        return [rate_limit_view(limit) for limit in await client.list_rate_limits()]
    except McpError as error:
        if error.code == grpc.StatusCode.PERMISSION_DENIED:
            return None
        raise
