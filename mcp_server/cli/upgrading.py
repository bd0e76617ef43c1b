"""`mcp workflow upgrade`: new versions of the workflows whose subworkflow nodes run an older
version than the latest of what they run (docs/workflows.md, "subworkflow")."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from mcp_sdk.client import Client, Upgrade


def add_parser(workflows: Any) -> None:
    upgrade = workflows.add_parser(
        "upgrade",
        help="store new versions of the workflows (every one, or those named) whose subworkflows run older"
        " versions, running the latest instead",
    )
    upgrade.add_argument("ids", nargs="*", metavar="ID", help="only these workflows (default: every workflow)")
    upgrade.add_argument(
        "--runs",
        action="append",
        default=[],
        metavar="ID",
        help="move only the nodes that run this workflow (repeatable), and those that run a workflow this"
        " upgrade changed, so a fix carries through every level",
    )
    upgrade.add_argument("--dry-run", action="store_true", help="store nothing; say what would move")


async def run(client: Client, args: argparse.Namespace, out: Callable[[Any], None] | None) -> int:
    """Upgrade what the arguments select; exit status 1 when the server refused an upgrade."""
    upgrades = await client.upgrade_subworkflows(args.ids, runs=args.runs, dry_run=args.dry_run)
    if out is not None:
        out({"upgrades": [_as_json(u) for u in upgrades], "dry_run": args.dry_run})
    elif not upgrades:
        print("every subworkflow runs the latest version already")
    for upgrade in upgrades if out is None else ():
        moves = ", ".join(f"{m.workflow_id} v{m.from_version} -> v{m.to_version}" for m in upgrade.moves)
        if upgrade.error is not None:
            print(f"{upgrade.workflow_id} v{upgrade.from_version}: refused: {upgrade.error.message} ({moves})")
        elif args.dry_run:
            print(f"{upgrade.workflow_id} v{upgrade.from_version}: would run {moves}")
        else:
            print(f"{upgrade.workflow_id} v{upgrade.from_version} -> v{upgrade.to_version}: runs {moves}")
    return 1 if any(u.error is not None for u in upgrades) else 0


def _as_json(upgrade: Upgrade) -> dict[str, Any]:
    return {
        "workflow_id": upgrade.workflow_id,
        "from_version": upgrade.from_version,
        "to_version": upgrade.to_version,
        "moves": [
            {"path": m.path, "workflow_id": m.workflow_id, "from_version": m.from_version, "to_version": m.to_version}
            for m in upgrade.moves
        ],
        "error": None if upgrade.error is None else {"reason": upgrade.error.reason, "message": upgrade.error.message},
    }
