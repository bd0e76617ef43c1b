"""A workflow page's subworkflows: the workflows it runs, at the versions it pinned, each with its
latest version now, and the button that stores a new version running the latest of each (the
SDK's upgrade_subworkflows for this one workflow)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlencode

from aiohttp import web

from mcp_sdk.client import Client
from mcp_sdk.errors import McpError
from mcp_sdk.proto import workflow_pb2
from mcp_sdk.workflow_tree import all_nodes
from mcp_server.console.base import api


async def pinned_by(client: Client, shown: workflow_pb2.Workflow, most: int = 50) -> list[dict[str, Any]]:
    """The workflows `shown` runs as subworkflows (not theirs), each with the version it pinned and
    that workflow's latest now (0: deleted since), so a page says which have moved on."""
    pinned = {
        (n.subworkflow.workflow_id, n.subworkflow.version): None
        for _, n in all_nodes(shown.root, into_subworkflows=False)
        if n.WhichOneof("kind") == "subworkflow"
    }
    runs = list(pinned)[:most]
    found = await asyncio.gather(*(client.get_workflow(w) for w, _ in runs), return_exceptions=True)
    for reply in found:
        if isinstance(reply, BaseException) and not (
            isinstance(reply, McpError) and reply.reason == "WORKFLOW_NOT_FOUND"
        ):
            raise reply
    return [
        {"workflow_id": w, "version": v, "latest": r.version if isinstance(r, workflow_pb2.Workflow) else 0}
        for (w, v), r in zip(runs, found, strict=True)
    ]


async def upgrade(request: web.Request) -> web.StreamResponse:
    """POST /workflows/{id}/upgrade: a new version of the workflow running the latest version of
    each workflow it runs; back to that version's page, which says so (or why the server refused)."""
    workflow_id = request.match_info["workflow_id"]
    page = f"/workflows/{quote(workflow_id, safe='')}"
    upgrades = await api(request).upgrade_subworkflows([workflow_id])
    if not upgrades:
        outcome = {"upgraded": "none"}
    elif upgrades[0].error is not None:
        outcome = {"upgrade_refused": upgrades[0].error.message[:300]}
    else:
        done = upgrades[0]
        outcome = {"version": str(done.to_version), "upgraded": str(done.from_version)}
    return web.Response(status=303, headers={"Location": f"{page}?{urlencode(outcome)}"})


def upgrade_notice(query: Mapping[str, str]) -> str:
    """What the last click of the button did, from the page's query."""
    if query.get("upgrade_refused"):
        return f"not upgraded: {query['upgrade_refused']}"
    if query.get("upgraded") == "none":
        return "every workflow it runs is at its latest version already"
    if query.get("upgraded", "").isdigit():
        return f"stored from v{query['upgraded']}: it runs the latest version of each workflow it runs"
    return ""
