"""`mcp task delete`: finished tasks, by id or every one a filter selects."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from mcp_sdk.client import Client
from mcp_sdk.errors import McpError
from mcp_server.cli.selection import FINISHED, add_filter_arguments, selected_ids


def add_parser(tasks: Any) -> None:
    delete = tasks.add_parser(
        "delete",
        help="delete finished tasks with everything stored of them: by id, or every one --status selects"
        " (and --workflow, --label)",
    )
    delete.add_argument("ids", nargs="*", metavar="ID")
    add_filter_arguments(delete, FINISHED, "every task that ended so")
    delete.add_argument("--allow-missing", action="store_true", help="a task that does not exist is no error")


async def run(client: Client, args: argparse.Namespace, out: Callable[[Any], None] | None) -> int:
    """Delete what the arguments name; exit status 1 when a named task could not be deleted."""
    if bool(args.ids) == bool(args.status):
        raise SystemExit(
            "mcp task delete: give task ids, or --status (and --workflow, --label) to select finished tasks"
        )
    ids = list(args.ids) if args.ids else [task_id async for task_id in selected_ids(client, args)]
    deleted: list[str] = []
    missing: list[str] = []
    refused: list[dict[str, str]] = []
    for task_id in ids:
        try:
            (deleted if await client.delete(task_id, allow_missing=args.allow_missing) else missing).append(task_id)
        except McpError as error:
            if not args.ids and error.reason == "TASK_NOT_FOUND":  # deleted meanwhile by someone else
                missing.append(task_id)
                continue
            refused.append({"task_id": task_id, "reason": error.reason, "message": error.message})
    if out:
        out({"deleted": deleted, "missing": missing, "refused": refused})
    else:
        for task_id in deleted:
            print(f"task {task_id} deleted")
        for task_id in missing:
            print(f"task {task_id}: none to delete")
        for problem in refused:
            print(
                f"error: task {problem['task_id']} not deleted: {problem['reason']}: {problem['message']}",
                file=sys.stderr,
            )
        if not args.ids:
            print(f"{len(deleted)} task(s) deleted")
    return 1 if refused else 0
