"""`mcp schedule ...`: create, list, get, pause, unpause, trigger, backfill, delete."""

from __future__ import annotations

import argparse
import datetime as dt
from collections.abc import Callable
from typing import Any

from mcp_sdk.client import Client
from mcp_sdk.proto import schedule_pb2
from mcp_server.cli import render
from mcp_server.cli.inputs import parse_input

OVERLAPS = ("skip", "buffer_one", "allow_all", "cancel_other")


def add_parser(groups: Any, parse_seconds: Callable[[str], float]) -> None:
    schedules = groups.add_parser("schedule", help="tasks started on a clock").add_subparsers(
        dest="command", required=True
    )
    create = schedules.add_parser("create", help="a schedule: --cron, --every and --at, in --tz")
    create.add_argument("id")
    create.add_argument("--workflow", required=True)
    create.add_argument("--input", default="", help="the task input: a JSON object, or @FILE")
    create.add_argument("--cron", action="append", default=[], help="5 fields, or 6 with seconds first; repeatable")
    create.add_argument("--every", action="append", default=[], type=parse_seconds, help="10s, 5m, 1h; repeatable")
    create.add_argument("--at", type=parse_moment, help="once, at an RFC 3339 time")
    create.add_argument("--tz", default="", help="IANA time zone of the cron expressions (default UTC)")
    create.add_argument("--overlap", choices=OVERLAPS, default="skip")
    create.add_argument("--catchup", type=parse_seconds, default=0.0, help="how late a missed fire may still run")
    create.add_argument("--paused", action="store_true")
    create.add_argument("--note", default="")
    schedules.add_parser("list")
    schedules.add_parser("get").add_argument("id")
    pause = schedules.add_parser("pause")
    pause.add_argument("id")
    pause.add_argument("--note", default="")
    schedules.add_parser("unpause").add_argument("id")
    schedules.add_parser("trigger", help="start the schedule's task now").add_argument("id")
    backfill = schedules.add_parser("backfill", help="start a task for every fire time in [--start, --end)")
    backfill.add_argument("id")
    backfill.add_argument("--start", type=parse_moment, required=True)
    backfill.add_argument("--end", type=parse_moment, required=True)
    backfill.add_argument("--overlap", choices=OVERLAPS, default="allow_all")
    schedules.add_parser("delete").add_argument("id")


async def run(client: Client, args: argparse.Namespace, out: Callable[[Any], None] | None) -> int:
    if args.command == "create":
        created = await client.create_schedule(
            args.id,
            args.workflow,
            parse_input(args.input) or None,
            cron=args.cron,
            every=args.every,
            at=args.at,
            time_zone=args.tz,
            overlap=args.overlap,
            catchup_window=args.catchup,
            paused=args.paused,
            note=args.note,
        )
        (out or _print_schedule)(render.to_json(created))
    elif args.command == "list":
        (out or _print_rows)({"schedules": [render.to_json(s) for s in await client.list_schedules()]})
    elif args.command == "get":
        (out or _print_schedule)(render.to_json(await client.get_schedule(args.id)))
    elif args.command == "pause":
        (out or _print_schedule)(render.to_json(await client.pause_schedule(args.id, args.note)))
    elif args.command == "unpause":
        (out or _print_schedule)(render.to_json(await client.unpause_schedule(args.id)))
    elif args.command == "trigger":
        task = await client.trigger_schedule(args.id)
        (out or (lambda v: print(v["task"]["task_id"])))({"task": render.to_json(task)})
    elif args.command == "backfill":
        runs = await client.backfill_schedule(args.id, args.start, args.end, args.overlap)
        (out or (lambda v: print(f"{v['runs']} tasks started")))({"runs": runs})
    elif args.command == "delete":
        await client.delete_schedule(args.id)
        (out or (lambda v: print(f"schedule {args.id} deleted")))({})
    return 0


def parse_moment(text: str) -> dt.datetime:
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an RFC 3339 time (2026-12-24T09:00:00+01:00)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _when(schedule: dict[str, Any]) -> str:
    spec = schedule.get("spec", {})
    parts = [*spec.get("cron", []), *(f"every {e}" for e in spec.get("every", []))]
    if spec.get("run_at"):
        parts.append(f"at {spec['run_at']}")
    zone = f" ({spec['time_zone']})" if spec.get("time_zone") else ""
    return ", ".join(parts) + zone


def _print_rows(value: dict[str, Any]) -> None:
    print(f"{'SCHEDULE':<24}{'WORKFLOW':<20}{'STATE':<8}{'RUNS':>6}  {'NEXT FIRE':<26}WHEN")
    for s in value["schedules"]:
        info = s.get("info", {})
        nxt = (info.get("next_fire_times") or ["-"])[0]
        state = "paused" if s.get("paused") else "active"
        workflow = s.get("action", {}).get("workflow_id", "")
        print(f"{s['schedule_id']:<24}{workflow:<20}{state:<8}{info.get('runs', 0):>6}  {nxt:<26}{_when(s)}")


def _print_schedule(s: dict[str, Any]) -> None:
    info = s.get("info", {})
    state = "paused" if s.get("paused") else "active"
    note = f" ({s['note']})" if s.get("note") else ""
    print(f"schedule {s['schedule_id']}: {state}{note}, runs {s.get('action', {}).get('workflow_id', '')}")
    print(f"  when: {_when(s)}; overlap {schedule_pb2.OverlapPolicy.Name(_overlap(s)).removeprefix('OVERLAP_POLICY_')}")
    counts = f"runs {info.get('runs', 0)}, skipped {info.get('skipped', 0)}, missed {info.get('missed', 0)}"
    counts += f", refused {info['refused']}" if info.get("refused") else ""
    print(f"  {counts}")
    for fire in info.get("next_fire_times", []):
        print(f"  next: {fire}")
    for run in info.get("recent_runs", []):
        status = run.get("status", "TASK_STATUS_UNSPECIFIED").removeprefix("TASK_STATUS_").lower()
        status = "gone (deleted or purged)" if status == "unspecified" else status
        if run.get("refusal"):
            print(f"  ran:  {run['fire_time']}  (refused: {run['refusal']})")
            continue
        print(
            f"  ran:  {run['fire_time']}  {run.get('task_id') or '(skipped)'}  {status if run.get('task_id') else ''}"
        )


def _overlap(s: dict[str, Any]) -> int:
    given = s.get("overlap", "OVERLAP_POLICY_SKIP")
    return int(schedule_pb2.OverlapPolicy.Value(given)) if isinstance(given, str) else int(given)
