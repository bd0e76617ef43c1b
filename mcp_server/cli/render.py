"""How the CLI shows things: events as coloured lines, tasks and lists as tables, or JSON."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mcp_sdk.proto import task_pb2
from mcp_sdk.usage import subtree_usage
from mcp_sdk.values import message_to_dict
from mcp_server.engine.values import normalize

console = Console(highlight=False)
EVENT_STYLE = {
    "COMPLETED": "green",
    "STEP_COMPLETED": "green",
    "FAILED": "bold red",
    "STEP_FAILED": "red",
    "CANCELLED": "yellow",
    "CLEANING_UP": "yellow",
    "STEP_RETRYING": "yellow",
    "FALLBACK_USED": "magenta",
    "TRANSITION_TAKEN": "cyan",
    "SUPERVISOR_DECISION": "cyan",
    "BREAKER_STATE_CHANGED": "magenta",
}


def to_json(message: Message) -> dict[str, Any]:
    """A message as JSON, with whole numbers shown as integers: Struct numbers are doubles on the
    wire, and `"index": 0.0` is not what anyone wrote."""
    return message_to_dict(message)


def value_json(message: Message) -> Any:
    return normalize(json_format.MessageToDict(message))


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


def event_line(event: task_pb2.TaskEvent) -> None:
    kind = task_pb2.TaskEventType.Name(event.type).removeprefix("TASK_EVENT_TYPE_")
    style = EVENT_STYLE.get(kind, "white")
    when = event.time.ToDatetime().strftime("%H:%M:%S.%f")[:-3]
    where = f" {event.step_path}" if event.step_path else ""
    protocol = escape(f" [{event.protocol}]") if event.protocol else ""
    attempt = f" #{event.attempt}" if event.attempt > 1 else ""
    console.print(
        f"[dim]{event.sequence:>4} {when}[/dim] [{style}]{kind:<20}[/{style}]{escape(where)}{protocol}{attempt} "
        f"[dim]{escape(event.message)}[/dim]",
        soft_wrap=True,
    )


def task_summary(task: task_pb2.Task) -> None:
    status = task_pb2.TaskStatus.Name(task.status).removeprefix("TASK_STATUS_")
    console.print(
        f"task [bold]{task.task_id}[/bold]  workflow {task.workflow_id} v{task.workflow_version}"
        f"  status [bold]{status}[/bold]"
    )
    if task.concurrency_key:
        console.print(f"concurrency key {task.concurrency_key}")
    if task.rerun_of:
        console.print(f"a rerun of {task.rerun_of} from {task.rerun_from_step_path}")
    if task.HasField("cancel_request"):
        outcome = task.cancel_request.outcome.replace("_", " ")
        doing = f"cleaned up ({outcome})" if outcome else "cleaning up, then it ends CANCELLED"
        when = task.cancel_request.time.ToDatetime().strftime("%Y-%m-%d %H:%M:%S")
        console.print(f"cancelled at {when} UTC ({escape(task.cancel_request.reason)}): {doing}")
        failed = [s.path for s in task.steps if s.status == task_pb2.STEP_STATUS_FAILED and s.kind == "step"]
        if task.cancel_request.outcome == "failed" and failed:  # a handler's step: they run after the bodies
            again = f"to run the clean-up again: mcp task rerun {task.task_id} --from {escape(failed[-1])}"
            console.print(again, soft_wrap=True)  # one line, to copy
    if task.usage:
        console.print("usage: " + usage_text(task.usage))
    if task.steps:
        table = Table()
        table.add_column("path", min_width=18, overflow="fold")
        table.add_column("protocol", min_width=8)
        table.add_column("status", min_width=9)
        table.add_column("attempts", justify="right")
        table.add_column("usage", overflow="fold")
        table.add_column("output", no_wrap=True, overflow="ellipsis", max_width=50)
        below = subtree_usage(task.steps)
        for step in task.steps:
            output = json.dumps(value_json(step.output)) if step.HasField("output") else step.error.message
            used = usage_text(step.usage) or (f"in all: {usage_text(below[step.path])}" if step.path in below else "")
            table.add_row(step.path, step.protocol, step_status(step), str(step.attempts), used, output[:80])
        console.print(table)
    if task.HasField("result"):
        console.print("result:", json.dumps(value_json(task.result), indent=2))
    if task.error.message:
        console.print(f"[red]error: {task.error.message}[/red]")


def step_status(step: task_pb2.StepState) -> str:
    """A step's status, with what a reader asks next: kept by a rerun, which fallback answered,
    when a retry waiting out its backoff is due."""
    status = task_pb2.StepStatus.Name(step.status).removeprefix("STEP_STATUS_")
    if step.reused:
        status += " (reused)"
    if step.fallback_protocol:
        status += f" (via {step.fallback_protocol})"
    if step.HasField("retry_time"):
        status += f" (retry {step.failed_attempts + 1} at {step.retry_time.ToDatetime().strftime('%H:%M:%S')}Z)"
    return status


def usage_text(usage: Mapping[str, float]) -> str:
    """`prompt_tokens 120, completion_tokens 40, cost 0.0031`: what a task or a step used."""
    return ", ".join(f"{name} {amount:g}" for name, amount in sorted(usage.items()))


def task_rows(tasks: list[task_pb2.Task]) -> None:
    table = Table("task_id", "workflow", "status", "priority", "created")
    for task in tasks:
        table.add_row(
            task.task_id,
            f"{task.workflow_id} v{task.workflow_version}",
            task_pb2.TaskStatus.Name(task.status).removeprefix("TASK_STATUS_"),
            str(task.priority),
            task.create_time.ToDatetime().isoformat(timespec="seconds"),
        )
    console.print(table)
