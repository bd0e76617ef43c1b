"""`mcp task rerun --status failed ...`: rerun every finished task a filter selects, once each."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from mcp_sdk.client import Client
from mcp_sdk.task_methods import UNSET
from mcp_server.cli.inputs import parse_json
from mcp_server.cli.selection import FINISHED, add_filter_arguments, dry_run, status_names

# A refusal past a submission rate limit whose retry time is within this is waited out; a longer
# one stops the pass (the same command later goes on where it stopped).
RATE_LIMITED_WAIT = 60.0


def add_bulk_arguments(rerun: argparse.ArgumentParser) -> None:
    """The selection of `mcp task rerun` without an id (the step, input and version are the single rerun's)."""
    add_filter_arguments(rerun, FINISHED, "rerun every task that ended so, once")
    rerun.add_argument("--limit", type=int, default=0, help="with --status: start at most this many reruns")
    rerun.add_argument("--dry-run", action="store_true", help="with --status: list what would be rerun, rerun nothing")


def check(args: argparse.Namespace) -> None:
    """Exactly one of an id and --status; the bulk mode takes no --watch or --request-id."""
    if bool(args.id) == bool(args.status):
        raise SystemExit("mcp task rerun: give a task id, or --status (and --workflow, --label) to select tasks")
    if args.status and (args.watch or args.request_id):
        raise SystemExit("mcp task rerun --status: each rerun's request id is made from its task's; no --watch")
    if not args.status and (args.workflow or args.label or args.limit or args.dry_run):
        raise SystemExit("mcp task rerun: --workflow, --label, --limit and --dry-run select tasks with --status")


async def run_bulk(client: Client, args: argparse.Namespace, out: Callable[[Any], None] | None) -> int:
    """Rerun the selected tasks; exit status 1 when the server refused any of them."""
    if args.dry_run:
        return await dry_run(client, args, "rerun (unless a pass with the same request did already)", out)
    client.rate_limited_wait = max(client.rate_limited_wait, RATE_LIMITED_WAIT)
    rerun: list[dict[str, str]] = []
    already: list[dict[str, str]] = []
    refused: list[dict[str, str]] = []
    async for outcome in client.rerun_tasks(
        statuses=status_names(args),
        workflow_id=args.workflow,
        labels=dict(args.label),
        from_step_path=args.from_path or "",
        input=parse_json(args.input) if args.input else UNSET,
        version=args.version,
        limit=args.limit,
    ):
        if outcome.error is not None:
            problem = {"task_id": outcome.task_id, "reason": outcome.error.reason, "message": outcome.error.message}
            refused.append(problem)
            if not out:
                print(
                    f"error: task {outcome.task_id} not rerun: {problem['reason']}: {problem['message']}",
                    file=sys.stderr,
                )
            continue
        assert outcome.rerun is not None
        pair = {"task_id": outcome.task_id, "rerun_id": outcome.rerun.task_id}
        (rerun if outcome.created else already).append(pair)
        if not out:
            done = "rerun as" if outcome.created else "was rerun already as"
            print(f"task {outcome.task_id} {done} {outcome.rerun.task_id}", flush=True)
    if out:
        out({"rerun": rerun, "already": already, "refused": refused})
    else:
        print(f"{len(rerun)} task(s) rerun, {len(already)} rerun already, {len(refused)} refused")
    return 1 if refused else 0
