"""What `mcp task delete|rerun|cancel --status ...` share: the filter's arguments, and the ids of
the tasks it selects, page by page."""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from mcp_sdk.client import Client
from mcp_server.cli.inputs import parse_label

FINISHED = ("completed", "failed", "cancelled")
UNFINISHED = ("pending", "running", "waiting")


def add_filter_arguments(parser: argparse.ArgumentParser, choices: Sequence[str], what: str) -> None:
    """--status (one of `choices`, repeatable), --workflow and --label; `what` says what is done to them."""
    parser.add_argument(
        "--status", action="append", default=[], choices=choices, help=f"instead of ids: {what} (repeatable)"
    )
    parser.add_argument("--workflow", default="", help="with --status: only this workflow's tasks")
    parser.add_argument(
        "--label",
        action="append",
        default=[],
        type=parse_label,
        metavar="KEY=VALUE",
        help="with --status: only the tasks that carry it (repeatable)",
    )


def status_names(args: argparse.Namespace) -> list[str]:
    return [f"TASK_STATUS_{s.upper()}" for s in args.status]


async def selected_ids(client: Client, args: argparse.Namespace, limit: int = 0) -> AsyncIterator[str]:
    """Every task the filter selects, newest first (at most `limit`, 0: all); pages stay valid
    while the tasks they listed are deleted, rerun or cancelled."""
    token = ""
    given = 0
    while True:
        page = await client.list_tasks(
            statuses=status_names(args),
            workflow_id=args.workflow,
            labels=dict(args.label),
            page_size=500,
            page_token=token,
        )
        for task in page.tasks:
            if limit and given >= limit:
                return
            given += 1
            yield task.task_id
        token = page.next_page_token
        if not token:
            return


async def dry_run(client: Client, args: argparse.Namespace, verb: str, out: Callable[[Any], None] | None) -> int:
    """`--dry-run`: list the tasks the filter selects, change nothing."""
    selected = [task_id async for task_id in selected_ids(client, args, args.limit)]
    if out:
        out({"selected": selected})
    else:
        for task_id in selected:
            print(f"task {task_id} would be {verb}")
        print(f"{len(selected)} task(s) selected")
    return 0
