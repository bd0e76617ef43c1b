"""`mcp bulk cancel|rerun|delete|get|list|abort`: bulk actions the server carries out in the
background (bulk.proto), as opposed to `mcp task cancel|rerun|delete --status ...`, which this client
makes call by call."""

from __future__ import annotations

import argparse
import datetime as dt
from collections.abc import Callable
from typing import Any

from mcp_sdk.bulk_actions import task_selection
from mcp_sdk.client import Client
from mcp_server.cli import render
from mcp_server.cli.inputs import parse_label
from mcp_server.cli.schedules import parse_moment

STATUSES = ("pending", "running", "waiting", "completed", "failed", "cancelled")


def time_argument(parse_seconds: Callable[[str], float]) -> Callable[[str], dt.datetime]:
    """The parser of --since and --until: an RFC 3339 time, or a duration (15m, 2h) before now."""

    def since(text: str) -> dt.datetime:
        if any(mark in text for mark in "-:T"):
            return parse_moment(text)
        return dt.datetime.now(dt.UTC) - dt.timedelta(seconds=parse_seconds(text))

    return since


def add_parser(groups: Any, parse_seconds: Callable[[str], float]) -> None:
    bulk = groups.add_parser("bulk", help="cancel, rerun or delete many tasks, on the server, in the background")
    commands = bulk.add_subparsers(dest="command", required=True)
    since = time_argument(parse_seconds)

    kinds = (
        ("cancel", "cancel the unfinished ones"),
        ("rerun", "rerun the finished ones"),
        ("delete", "delete the finished ones, with everything stored of them"),
    )
    for kind, what in kinds:
        action = commands.add_parser(kind, help=f"{what} among the tasks named, or a filter selects")
        action.add_argument("ids", nargs="*", help="task ids (or give a filter)")
        action.add_argument("--status", action="append", default=[], choices=STATUSES, help="repeatable")
        action.add_argument("--workflow", default="")
        action.add_argument("--owner", default="", help="an admin's filter: this principal's tasks")
        action.add_argument("--label", action="append", default=[], type=parse_label, metavar="KEY=VALUE")
        action.add_argument("--since", type=since, help="created at or after: RFC 3339, or a duration ago (15m)")
        action.add_argument("--until", type=since, help="created before: RFC 3339, or a duration ago")
        action.add_argument("--max", type=int, default=0, help="act on at most this many tasks")
        action.add_argument("--wait", action="store_true", help="wait for the action to end, and show it")
        if kind == "cancel":
            action.add_argument("--reason", default="")
        if kind == "rerun":
            action.add_argument("--version", type=int, default=0, help="the workflow version the reruns run")
            action.add_argument("--from", dest="from_step", default="", help="the step each runs again from")
    commands.add_parser("get").add_argument("id")
    commands.add_parser("list")
    abort = commands.add_parser("abort", help="stop a running action after the tasks in hand")
    abort.add_argument("id")
    abort.add_argument("--reason", default="")


async def run(client: Client, args: argparse.Namespace, out: Callable[[Any], None] | None) -> int:
    show = out or _print_action
    if args.command in ("cancel", "rerun", "delete"):
        selection = task_selection(
            args.ids,
            statuses=[f"TASK_STATUS_{s.upper()}" for s in args.status],
            workflow_id=args.workflow,
            owner=args.owner,
            labels=dict(args.label),
            created_after=args.since,
            created_before=args.until,
        )
        action = await client.start_bulk_action(
            args.command,
            selection,
            reason=getattr(args, "reason", ""),
            workflow_version=getattr(args, "version", 0),
            max_tasks=args.max,
            from_step_path=getattr(args, "from_step", ""),
        )
        if args.wait:
            action = await client.wait_bulk_action(action.action_id)
        show(render.to_json(action))
    elif args.command == "get":
        show(render.to_json(await client.get_bulk_action(args.id)))
    elif args.command == "list":
        page = await client.list_bulk_actions()
        (out or _print_rows)({"bulk_actions": [render.to_json(a) for a in page.bulk_actions]})
    elif args.command == "abort":
        show(render.to_json(await client.abort_bulk_action(args.id, args.reason)))
    return 0


def _state(action: dict[str, Any]) -> str:
    return str(action.get("state", "")).removeprefix("BULK_ACTION_STATE_").lower()


def _kind(action: dict[str, Any]) -> str:
    return str(action.get("kind", "")).removeprefix("BULK_ACTION_KIND_").lower()


DONE = {"cancel": "cancelled", "rerun": "rerun", "delete": "deleted"}


def _counts(action: dict[str, Any]) -> str:
    done = DONE.get(_kind(action), "acted on")
    return (
        f"{action.get('matched', 0)} looked at: {action.get('succeeded', 0)} {done}, "
        f"{action.get('skipped', 0)} skipped, {action.get('failed', 0)} failed"
    )


def _print_action(action: dict[str, Any]) -> None:
    print(f"bulk action {action['action_id']}: {_kind(action)}, {_state(action)}")
    print(f"  {_counts(action)}")
    if action.get("abort_reason"):
        print(f"  aborted: {action['abort_reason']}")
    for failure in action.get("failures", []):
        print(f"  failed: {failure.get('task_id')}: {failure.get('message', '')}")


def _print_rows(value: dict[str, Any]) -> None:
    print(f"{'ACTION':<30}{'KIND':<8}{'STATE':<10}COUNTS")
    for a in value["bulk_actions"]:
        print(f"{a['action_id']:<30}{_kind(a):<8}{_state(a):<10}{_counts(a)}")
