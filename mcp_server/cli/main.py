"""`mcp`: apply workflows, submit and watch tasks, inspect protocols.

The server address comes from --server or MCP_SERVER (default 127.0.0.1:50051), a token from
--token or MCP_TOKEN, a CA for TLS from --tls-ca or MCP_TLS_CA (and a client certificate from
--tls-cert/--tls-key). `mcp console` serves the web console for that server. Every command takes --json for
machine-readable output. Errors print the server's message and each field violation, and exit
with status 1. Built on the SDK's client (mcp_sdk), as any other client would be.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import yaml
from rich.live import Live

from mcp_sdk.client import Client, Tls, workflow_from
from mcp_sdk.errors import McpError
from mcp_sdk.proto import task_pb2, workflow_pb2
from mcp_server.cli import (
    bulk_actions,
    cancelling,
    conversations,
    deleting,
    events,
    render,
    reruns,
    schedules,
    upgrading,
)
from mcp_server.cli.graph import task_graph, to_dot, to_mermaid, workflow_graph
from mcp_server.cli.inputs import parse_input, parse_json, parse_label
from mcp_server.cli.tree import RunTree
from mcp_server.console.app import start_console
from mcp_server.shutdown import stop_requested


def load_workflow(path: str) -> workflow_pb2.Workflow:
    """Read a YAML or JSON workflow file; the schema is enforced by protobuf's json_format."""
    return workflow_from(Path(path).read_text())


async def watch(client: Client, task_id: str, after: int, as_json: bool, plain: bool = False) -> int:
    """Follow a task (through reconnects: the SDK resumes after the last event shown): a live tree on
    a terminal, one line per event otherwise, or JSON lines. Exit status 0 when the task completed,
    2 when it failed or was cancelled."""
    final = 0
    stream = client.watch(task_id, after)
    if as_json or plain or not render.console.is_terminal:
        async for event in stream:
            if as_json:
                print(json.dumps(render.to_json(event)), flush=True)
            else:
                render.event_line(event)
            final = event.type
    else:
        tree = RunTree(task_id)
        with Live(tree.render(), console=render.console, refresh_per_second=10) as live:
            async for event in stream:
                tree.apply(event)
                live.update(tree.render())
                final = event.type
    return 0 if final == task_pb2.TASK_EVENT_TYPE_COMPLETED else 2


def _tls(args: argparse.Namespace) -> Tls | None:
    if not (args.tls_ca or args.tls_cert):
        return None
    return Tls.from_files(ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key)


async def run(args: argparse.Namespace) -> int:
    if args.group == "console":
        return await serve_console(args)
    async with Client(args.server, token=args.token, tls=_tls(args)) as client:
        return await _command(client, args)


async def serve_console(args: argparse.Namespace) -> int:
    """`mcp console`: the web console for the server at --server, until Ctrl-C or SIGTERM."""
    stop = stop_requested()
    console = await start_console(args.server, args.listen, tls=_tls(args))
    print(f"mCP console on {console.url} for the orchestrator at {args.server}", flush=True)
    await stop.wait()
    await console.stop()
    return 0


async def _command(client: Client, args: argparse.Namespace) -> int:
    out = render.print_json if args.json else None
    cmd = (args.group, args.command)
    if args.group == "schedule":
        return await schedules.run(client, args, out)
    if args.group == "bulk":
        return await bulk_actions.run(client, args, out)
    if args.group == "event":
        return await events.run(client, args, out)
    if cmd == ("workflow", "apply"):
        created = await client.create_workflow(load_workflow(args.file))
        (
            out
            or (
                lambda v: render.console.print(
                    f"workflow [bold]{v['workflow_id']}[/bold] version {v['version']} created"
                )
            )
        )(render.to_json(created))
    elif cmd == ("workflow", "validate"):
        reply = await client.validate_workflow(load_workflow(args.file))
        (out or (lambda v: render.console.print(f"valid: {v.get('node_count')} nodes, depth {v.get('depth')}")))(
            render.to_json(reply)
        )
    elif cmd == ("workflow", "get"):
        workflow = await client.get_workflow(args.id, args.version)
        (out or (lambda v: print(yaml.safe_dump(v, sort_keys=False))))(render.to_json(workflow))
    elif cmd == ("workflow", "list"):
        workflows = {"workflows": [render.to_json(w) for w in await client.list_workflows()]}
        (
            out
            or (
                lambda v: [
                    print(f"{w['workflow_id']}\tv{w['version']}\t{w.get('description', '')}") for w in v["workflows"]
                ]
            )
        )(workflows)
    elif cmd == ("workflow", "delete"):
        (out or print)(render.to_json(await client.delete_workflow(args.id)))
    elif cmd == ("workflow", "upgrade"):
        return await upgrading.run(client, args, out)
    elif cmd == ("task", "submit"):
        task = await client.submit(
            args.workflow,
            parse_input(args.input),
            version=args.version,
            priority=args.priority,
            request_id=args.request_id,
            labels=dict(args.label),
            queue_timeout=None if args.queue_timeout is None else parse_seconds(args.queue_timeout),
        )
        if args.watch:
            if not args.json:
                render.console.print(f"task [bold]{task.task_id}[/bold] submitted; watching")
            code = await watch(client, task.task_id, 0, args.json, args.plain)
            if not args.json:
                render.task_summary(await client.get(task.task_id))
            return code
        (out or (lambda v: print(v["task"]["task_id"])))({"task": render.to_json(task)})
    elif cmd == ("task", "get"):
        task = await client.get(args.id)
        out(render.to_json(task)) if out else render.task_summary(task)
    elif cmd == ("task", "list"):
        statuses = [f"TASK_STATUS_{s.upper()}" for s in args.status]
        listed = await client.list_tasks(
            statuses=statuses,
            workflow_id=args.workflow or "",
            labels=dict(args.label),
            page_size=args.page_size,
            created_after=args.since,
            created_before=args.until,
        )
        out(render.to_json(listed)) if out else render.task_rows(list(listed.tasks))
    elif cmd == ("task", "cancel"):
        return await cancelling.run(client, args, out)
    elif cmd == ("task", "delete"):
        return await deleting.run(client, args, out)
    elif cmd == ("task", "conversation"):
        return await conversations.run(client, args, out)
    elif cmd == ("task", "watch"):
        return await watch(client, args.id, args.after, args.json, args.plain)
    elif cmd == ("task", "signal"):
        data = parse_json(args.data) if args.data else None
        sent = await client.signal(args.id, args.name, data, step_path=args.step or "", request_id=args.request_id)
        (out or _print_signal)(render.to_json(sent))
    elif cmd == ("task", "rerun"):
        reruns.check(args)
        if args.status:
            return await reruns.run_bulk(client, args, out)
        options: dict[str, Any] = {"input": parse_json(args.input)} if args.input else {}
        task = await client.rerun(
            args.id, args.from_path or "", version=args.version, request_id=args.request_id, **options
        )
        if args.watch:
            if not args.json:
                render.console.print(
                    f"task [bold]{task.task_id}[/bold]: a rerun of {args.id} from {task.rerun_from_step_path}; watching"
                )
            code = await watch(client, task.task_id, 0, args.json, args.plain)
            if not args.json:
                render.task_summary(await client.get(task.task_id))
            return code
        (out or (lambda v: print(v["task"]["task_id"])))({"task": render.to_json(task)})
    elif cmd == ("workflow", "graph"):
        graph = workflow_graph(await client.get_workflow(args.id, args.version))
        print(to_dot(graph) if args.format == "dot" else to_mermaid(graph))
    elif cmd == ("task", "graph"):
        task = await client.get(args.id, steps=False)
        task.steps.extend([step async for step in client.steps(args.id)])  # every step, however many pages
        graph = task_graph(task)
        print(to_dot(graph) if args.format == "dot" else to_mermaid(graph))
    elif cmd == ("ratelimit", "put"):
        put = await client.put_rate_limit(args.key, args.limit, parse_seconds(args.period), args.burst)
        (out or _print_rate_limits)({"rate_limits": [render.to_json(put)]})
    elif cmd == ("ratelimit", "list"):
        (out or _print_rate_limits)({"rate_limits": [render.to_json(r) for r in await client.list_rate_limits()]})
    elif cmd == ("ratelimit", "get"):
        (out or _print_rate_limits)({"rate_limits": [render.to_json(await client.get_rate_limit(args.key))]})
    elif cmd == ("ratelimit", "delete"):
        await client.delete_rate_limit(args.key)
        (out or (lambda v: print(f"rate limit {args.key} deleted")))({})
    elif cmd == ("protocol", "list"):
        (out or _print_protocols)({"protocols": [render.to_json(p) for p in await client.list_protocols()]})
    elif cmd == ("protocol", "register"):
        (out or _print_protocols)(
            {"protocols": [render.to_json(p) for p in await client.register_protocols(args.address)]}
        )
    return 0


def _print_signal(value: dict[str, Any]) -> None:
    taken = f"taken by {value['step_path']}" if value.get("step_path") else "kept for the next wait of its name"
    event = f" (event {value['sequence']})" if value.get("sequence") else ""
    print(f"signal {'sent' if value.get('created') else 'already sent'}: {taken}{event}")


def _print_rate_limits(value: dict[str, Any]) -> None:
    for limit in value["rate_limits"]:
        burst = f" + burst {limit['burst']:g}" if limit.get("burst") else ""
        rule = f"{limit['limit']:g} per {limit['period']}{burst}"
        under = f" (under {limit['template']})" if limit.get("template") else ""
        wait = float(limit.get("next_unit", "0s").rstrip("s"))
        later = f", the next unit in {wait:.1f}s" if wait > 0 else ""
        waiting = int(limit.get("waiting", 0))
        line = f", {waiting} call{'s' if waiting != 1 else ''} waiting in line" if waiting else ""
        print(f"{limit['key']}\t{rule}{under}\t{limit.get('available', 0):g} available now{later}{line}")


def parse_seconds(text: str) -> float:
    """A duration: `1.5` or `1.5s`, `500ms`, `2m`, `1h`."""
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    for suffix in ("ms", "s", "m", "h"):
        if text.endswith(suffix):
            try:
                return float(text[: -len(suffix)]) * units[suffix]
            except ValueError:
                break
    try:
        return float(text)
    except ValueError:
        raise SystemExit(f"{text!r} is not a duration: use 500ms, 1s, 1.5m or 1h") from None


def _print_protocols(value: dict[str, Any]) -> None:
    """One line per protocol instance: where, how it is, what it offers and what is in use."""
    entries = value.get("protocols") or value.get("instances") or []
    print(
        f"{'PROTOCOL':<22}{'ADDRESS':<22}{'HEALTH':<12}{'BREAKER':<10}"
        f"{'EJECTED':<9}{'CALLS':>6}  CAPACITY (in use / offered)"
    )
    for entry in entries:
        manifest = entry["manifest"]
        health = entry.get("health", "").removeprefix("HEALTH_STATE_")
        breaker = entry.get("breaker", "").removeprefix("BREAKER_STATE_")
        ejected = "until " + entry["ejected_until"][11:19] if entry.get("ejected_until") else "no"
        print(
            f"{manifest['name']:<22}{entry['address']:<22}{health:<12}{breaker:<10}{ejected:<9}"
            f"{entry.get('calls_in_flight', 0):>6}  {_capacity_text(entry)}"
        )


def _capacity_text(entry: dict[str, Any]) -> str:
    offered, used = entry.get("capacity", {}), entry.get("capacity_in_use", {})
    parts = [
        f"{name} {used.get(name, 0)}/{offered[name]}"
        for name in ("cpu_millis", "memory_mb", "gpus")
        if offered.get(name)
    ]
    return ", ".join(parts) or "unlimited"


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="mcp", description="Client for the mCP orchestrator.")
    root.add_argument("--server", default=os.environ.get("MCP_SERVER", "127.0.0.1:50051"))
    root.add_argument("--token", default=os.environ.get("MCP_TOKEN"), help="bearer token (default: $MCP_TOKEN)")
    root.add_argument(
        "--tls-ca", default=os.environ.get("MCP_TLS_CA"), help="reach the server over TLS, trusting this CA (PEM)"
    )
    root.add_argument(
        "--tls-cert",
        default=os.environ.get("MCP_TLS_CERT"),
        help="client certificate, for a server that requires one (mTLS)",
    )
    root.add_argument("--tls-key", default=os.environ.get("MCP_TLS_KEY"), help="and its private key (PEM)")
    root.add_argument("--json", action="store_true", help="print JSON")
    groups = root.add_subparsers(dest="group", required=True)

    wf = groups.add_parser("workflow").add_subparsers(dest="command", required=True)
    wf.add_parser("apply", help="create a workflow (a new version) from YAML or JSON").add_argument("file")
    wf.add_parser("validate", help="check a workflow file without storing it").add_argument("file")
    get = wf.add_parser("get")
    get.add_argument("id")
    get.add_argument("--version", type=int, default=0)
    wf.add_parser("list").add_argument("--page-size", type=int, default=100)
    wf.add_parser("delete").add_argument("id")
    upgrading.add_parser(wf)
    wgraph = wf.add_parser("graph", help="the definition as a Mermaid or Graphviz DOT graph")
    wgraph.add_argument("id")
    wgraph.add_argument("--version", type=int, default=0)
    wgraph.add_argument("--format", choices=["mermaid", "dot"], default="mermaid")

    task = groups.add_parser("task").add_subparsers(dest="command", required=True)
    submit = task.add_parser("submit")
    submit.add_argument("workflow")
    submit.add_argument("--version", type=int, default=0)
    submit.add_argument("--input", help="JSON object, or @FILE")
    submit.add_argument("--priority", type=int, default=0)
    submit.add_argument("--request-id")
    submit.add_argument(
        "--queue-timeout", metavar="DURATION", help="a task not started within this (30s, 5m) ends CANCELLED"
    )
    submit.add_argument(
        "--label", action="append", default=[], type=parse_label, metavar="KEY=VALUE", help="repeatable"
    )
    submit.add_argument("--watch", action="store_true", help="follow the task to its end")
    submit.add_argument("--plain", action="store_true", help="with --watch: one line per event instead of a live tree")
    task.add_parser("get").add_argument("id")
    lst = task.add_parser("list")
    lst.add_argument(
        "--status",
        action="append",
        default=[],
        choices=["pending", "running", "waiting", "completed", "failed", "cancelled"],
    )
    lst.add_argument("--workflow")
    lst.add_argument(
        "--label",
        action="append",
        default=[],
        type=parse_label,
        metavar="KEY=VALUE",
        help="only tasks with it (repeatable)",
    )
    lst.add_argument("--page-size", type=int, default=50)
    created = bulk_actions.time_argument(parse_seconds)
    lst.add_argument("--since", type=created, help="created at or after: RFC 3339, or a duration ago (15m)")
    lst.add_argument("--until", type=created, help="created before: RFC 3339, or a duration ago")
    cancelling.add_parser(task)
    deleting.add_parser(task)
    conversations.add_parser(task)
    sig = task.add_parser("signal", help="send a signal to a task's wait node")
    sig.add_argument("id")
    sig.add_argument("name", help="the signal's name")
    sig.add_argument("--data", help="the payload: JSON, or @FILE")
    sig.add_argument("--step", help="only this step may take it (it must be waiting for it)")
    sig.add_argument("--request-id", help="idempotency key (default: a new one)")
    again = task.add_parser(
        "rerun",
        help="a new task from a finished one, keeping the steps before --from; or one each for every task"
        " --status selects (and --workflow, --label)",
    )
    again.add_argument("id", nargs="?")
    again.add_argument(
        "--from",
        dest="from_path",
        metavar="PATH",
        help="the step to run again, and all after it (default: where a failed task failed, else the start)",
    )
    again.add_argument("--input", help="what that step receives instead of what came before: JSON, or @FILE")
    again.add_argument("--version", type=int, default=0, help="the workflow version to run (default: the task's)")
    again.add_argument("--request-id", help="idempotency key (default: a new one)")
    again.add_argument("--watch", action="store_true", help="follow the rerun to its end")
    again.add_argument("--plain", action="store_true", help="with --watch: one line per event instead of a live tree")
    reruns.add_bulk_arguments(again)
    w = task.add_parser("watch")
    w.add_argument("id")
    w.add_argument("--after", type=int, default=0, help="replay events after this sequence number")
    w.add_argument("--plain", action="store_true", help="one line per event instead of a live tree")
    tgraph = task.add_parser("graph", help="the path a task took, as Mermaid or Graphviz DOT")
    tgraph.add_argument("id")
    tgraph.add_argument("--format", choices=["mermaid", "dot"], default="mermaid")

    console = groups.add_parser("console", help="serve the web console for the server at --server")
    console.add_argument(
        "--listen", default=os.environ.get("MCP_CONSOLE_LISTEN", "127.0.0.1:8080"), help="HOST:PORT to serve on"
    )
    console.set_defaults(command="serve")

    limits = groups.add_parser("ratelimit", help="rate limits shared by every replica").add_subparsers(
        dest="command", required=True
    )
    put = limits.add_parser(
        "put",
        help="set a key's limit (protocol:NAME: every call of that protocol; submit:PRINCIPAL: its submissions;"
        " PREFIX*: a template, every key under it limited on its own)",
    )
    put.add_argument("key")
    put.add_argument("--limit", type=float, required=True, help="units per period")
    put.add_argument("--period", default="1s", help="500ms, 1s, 1m, 1h (default 1s)")
    put.add_argument("--burst", type=float, default=0.0, help="units a window may hold above the limit")
    limits.add_parser("list", help="every limit, with what is available now")
    limits.add_parser(
        "get", help="the limit that applies to a key (its own or a template's), with what that key has now"
    ).add_argument("key")
    limits.add_parser("delete").add_argument("key")
    schedules.add_parser(groups, parse_seconds)
    bulk_actions.add_parser(groups, parse_seconds)
    events.add_parser(groups)
    proto = groups.add_parser("protocol").add_subparsers(dest="command", required=True)
    proto.add_parser("list")
    proto.add_parser("register").add_argument("address")
    return root


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        code = asyncio.run(run(args))
    except McpError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 1
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()
