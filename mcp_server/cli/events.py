"""`mcp event publish NAME`: publish an event; every workflow whose trigger takes it gets a task,
and every wait for it (with its key) takes it (events.proto)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from mcp_sdk.client import Client
from mcp_server.cli import render
from mcp_server.cli.inputs import parse_input, parse_label


def add_parser(groups: Any) -> None:
    event = groups.add_parser("event", help="publish events that start the workflows whose triggers take them")
    commands = event.add_subparsers(dest="command", required=True)
    publish = commands.add_parser("publish", help="publish an event: a task of every workflow whose trigger takes it")
    publish.add_argument("name")
    publish.add_argument("--data", help="the event's data: a JSON object, or @FILE")
    publish.add_argument("--request-id", default=None, help="the event's id: publishing it again starts nothing twice")
    publish.add_argument("--label", action="append", default=[], type=parse_label, metavar="KEY=VALUE")
    publish.add_argument("--priority", type=int, default=0)
    publish.add_argument(
        "--key", default="", help="the waits for the event with this key take it (and those with none)"
    )


async def run(client: Client, args: argparse.Namespace, out: Callable[[Any], None] | None) -> int:
    reply = await client.publish_event(
        args.name,
        parse_input(args.data),
        request_id=args.request_id,
        labels=dict(args.label),
        priority=args.priority,
        key=args.key,
    )
    shown = render.to_json(reply)
    if out is not None:
        out(shown)
        return 0
    started = shown.get("tasks", [])
    print(f"event {shown['event_id']}: {len(started)} task(s) started")
    for task in started:
        again = "" if task.get("created") else " (started before)"
        print(f"  {task['workflow_id']} v{task['workflow_version']}: task {task['task_id']}{again}")
    for refusal in shown.get("refused", []):
        print(f"  {refusal['workflow_id']}: refused: {refusal['status'].get('message', '')}")
    for woken in shown.get("woken", []):
        again = "" if woken.get("created") else " (reached before)"
        print(f"  task {woken['task_id']}: step {woken['step_path']} took it{again}")
    for refusal in shown.get("refused_waits", []):
        why = refusal["status"].get("message", "")
        print(f"  task {refusal['task_id']}: step {refusal['step_path']} refused it: {why}")
    for task_id in shown.get("cancelled", []):
        print(f"  task {task_id}: cancelled (its workflow's cancel_on)")
    if not any(shown.get(part) for part in ("tasks", "refused", "woken", "refused_waits", "cancelled")):
        print("  no workflow starts on it, and no step that waits for it now took it")
    return 0
