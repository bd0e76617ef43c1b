"""`mcp task conversation`: what an agent's model was last asked, turn by turn, and its answer."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from rich.markup import escape

from mcp_sdk.client import Client
from mcp_sdk.conversations import Conversation, conversations, transcript
from mcp_server.cli import render

SHOWN_CHARS = 2000  # of one turn's text; --full shows all


def add_parser(tasks: Any) -> None:
    talk = tasks.add_parser(
        "conversation", help="an agent's conversation: what its model was last asked, turn by turn, and its answer"
    )
    talk.add_argument("id")
    talk.add_argument("--agent", default="", metavar="PATH", help="only the agent at this step path")
    talk.add_argument("--full", action="store_true", help=f"every turn whole (else its first {SHOWN_CHARS} characters)")


async def run(client: Client, args: argparse.Namespace, out: Callable[[Any], None] | None) -> int:
    """Print the task's agents' conversations; exit status 1 when it has none (or none at --agent)."""
    task = await client.get(args.id)
    steps = [step async for step in client.steps(args.id)] if task.steps_next_page_token else list(task.steps)
    definition = await client.get_workflow(task.workflow_id, task.workflow_version)
    found = await conversations(client, args.id, steps, definition.root, args.agent)
    if out:
        out({"conversations": [c.to_json() for c in found]})
    else:
        for conversation in found:
            _print(conversation, None if args.full else SHOWN_CHARS)
    if not found:
        where = f" at {args.agent}" if args.agent else ""
        print(f"task {args.id} has no agent{where} that asked its model", file=sys.stderr)
        return 1
    return 0


def _print(conversation: Conversation, limit: int | None) -> None:
    render.console.print(
        f"[bold]agent {escape(conversation.agent_path)}[/bold]  {conversation.status}, {conversation.rounds} round(s);"
        f" what {escape(conversation.round_path or 'its model')} was asked, and its answer",
        soft_wrap=True,
    )
    for who, text in transcript(conversation, limit):
        color = "green" if who.startswith("answer") else "cyan"
        render.console.print(f"  [{color}]{escape(who)}[/{color}]: {escape(text)}", soft_wrap=True)
