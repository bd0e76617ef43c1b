"""Agents' conversations on a task's page: drawn with the page, and sent again as the agents go on
(`/tasks/{id}/conversations`, which the page's script asks for after a step inside an agent ends,
or any step while the page shows fewer agents than it may)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aiohttp import web

from mcp_sdk.client import Client
from mcp_sdk.conversations import conversations
from mcp_sdk.proto import task_pb2, workflow_pb2
from mcp_sdk.workflow_tree import all_nodes
from mcp_server.console.base import api, render
from mcp_server.console.present import SHOWN_AGENTS, SHOWN_VALUE_BYTES, conversation_view

STEPS_READ = 1000  # of a task's steps, to find its agents' latest rounds: as many as its page lists


async def conversations_context(
    client: Client, task_id: str, steps: Sequence[task_pb2.StepState], definition: workflow_pb2.Workflow
) -> dict[str, Any]:
    """What the conversations' part of a task page shows (bounded: present.py)."""
    if not any(node.WhichOneof("kind") == "agent" for _, node in all_nodes(definition.root)):
        return {"has_agents": False, "conversations": [], "more_agents": 0, "max_agents": SHOWN_AGENTS}
    found = await conversations(
        client, task_id, steps, definition.root, max_agents=SHOWN_AGENTS, max_bytes=SHOWN_VALUE_BYTES
    )
    return {
        "has_agents": True,
        "conversations": [conversation_view(c) for c in found],
        "more_agents": max(0, sum(s.kind == "agent" for s in steps) - SHOWN_AGENTS),
        "max_agents": SHOWN_AGENTS,
    }


async def conversations_fragment(request: web.Request) -> web.StreamResponse:
    """The conversations' part of the task's page, as it stands now."""
    task_id = request.match_info["task_id"]
    client = api(request)
    header = await client.get(task_id, steps=False)
    steps = []
    async for step in client.steps(task_id):
        steps.append(step)
        if len(steps) >= STEPS_READ:
            break
    definition = await client.get_workflow(header.workflow_id, header.workflow_version)
    context = await conversations_context(client, task_id, steps, definition)
    return render(request, "_conversations.html", {"task": {"task_id": task_id}, **context})
