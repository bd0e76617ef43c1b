"""`mcp task cancel`: a task by id, or every unfinished task a filter selects (a runaway batch)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from mcp_sdk.client import Client
from mcp_server.cli import render
from mcp_server.cli.selection import UNFINISHED, add_filter_arguments, dry_run, status_names


def add_parser(tasks: Any) -> None:
    cancel = tasks.add_parser("cancel", help="cancel a task, or every one --status selects (and --workflow, --label)")
    cancel.add_argument("id", nargs="?")
    cancel.add_argument("--reason", default="", help="why, kept in the task's CANCELLED event")
    add_filter_arguments(cancel, UNFINISHED, "cancel every task that is so")
    cancel.add_argument("--limit", type=int, default=0, help="with --status: cancel at most this many")
    cancel.add_argument("--dry-run", action="store_true", help="with --status: list what would be cancelled")


async def run(client: Client, args: argparse.Namespace, out: Callable[[Any], None] | None) -> int:
    """Cancel what the arguments name; exit status 1 when a selected task could not be cancelled."""
    if bool(args.id) == bool(args.status):
        raise SystemExit("mcp task cancel: give a task id, or --status (and --workflow, --label) to select tasks")
    if not args.status and (args.workflow or args.label or args.limit or args.dry_run):
        raise SystemExit("mcp task cancel: --workflow, --label, --limit and --dry-run select tasks with --status")
    if args.id:
        task = await client.cancel(args.id, args.reason)
        out(render.to_json(task)) if out else render.task_summary(task)
        return 0
    if args.dry_run:
        return await dry_run(client, args, "cancelled", out)
    cancelled: list[str] = []
    finished: list[str] = []
    refused: list[dict[str, str]] = []
    async for outcome in client.cancel_tasks(
        statuses=status_names(args),
        workflow_id=args.workflow,
        labels=dict(args.label),
        reason=args.reason or "cancelled with mcp task cancel --status",
        limit=args.limit,
    ):
        if outcome.error is not None:
            refused.append(
                {"task_id": outcome.task_id, "reason": outcome.error.reason, "message": outcome.error.message}
            )
            if not out:
                print(f"error: task {outcome.task_id} not cancelled: {outcome.error}", file=sys.stderr)
        elif outcome.finished:
            finished.append(outcome.task_id)
            if not out:
                print(f"task {outcome.task_id} had finished already")
        else:
            cancelled.append(outcome.task_id)
            if not out:
                print(f"task {outcome.task_id} cancelled", flush=True)
    if out:
        out({"cancelled": cancelled, "finished": finished, "refused": refused})
    else:
        print(f"{len(cancelled)} task(s) cancelled, {len(finished)} had finished, {len(refused)} refused")
    return 1 if refused else 0
