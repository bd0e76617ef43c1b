"""A live tree of a running task for `mcp task watch`: one line per node, with its status,
attempt and time, nested the way the step paths nest."""

from __future__ import annotations

from dataclasses import dataclass

from rich.markup import escape
from rich.tree import Tree

from mcp_sdk.proto import task_pb2

E = task_pb2.TaskEventType
ICONS = {
    "running": "[yellow]●[/]",
    "completed": "[green]✔[/]",
    "failed": "[red]✘[/]",
    "retrying": "[yellow]↻[/]",
    "cancelled": "[dim]⊘[/]",
}


@dataclass
class NodeLine:
    path: str
    protocol: str = ""
    status: str = "running"
    attempt: int = 1
    started: float = 0.0
    ended: float = 0.0
    note: str = ""


class RunTree:
    """Folds task events into a tree of node lines."""

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        self.lines: dict[str, NodeLine] = {}
        self.outcome = ""
        self.notes: list[str] = []

    def apply(self, event: task_pb2.TaskEvent) -> None:
        at = event.time.ToNanoseconds() / 1e9
        line = self.lines.get(event.step_path) if event.step_path else None
        if event.type == E.TASK_EVENT_TYPE_STEP_STARTED:
            self.lines[event.step_path] = NodeLine(event.step_path, event.protocol, started=at)
        elif line is not None and event.type == E.TASK_EVENT_TYPE_STEP_COMPLETED:
            line.status, line.ended, line.attempt = "completed", at, max(line.attempt, event.attempt)
        elif line is not None and event.type == E.TASK_EVENT_TYPE_STEP_FAILED:
            line.status, line.ended, line.note = "failed", at, event.message
        elif line is not None and event.type == E.TASK_EVENT_TYPE_STEP_RETRYING:
            line.status, line.attempt, line.note = "retrying", event.attempt + 1, event.message
        elif line is not None and event.type in (E.TASK_EVENT_TYPE_FALLBACK_USED, E.TASK_EVENT_TYPE_PROGRESS):
            line.note = event.message
            line.status = "running"
        elif event.type in (E.TASK_EVENT_TYPE_TRANSITION_TAKEN, E.TASK_EVENT_TYPE_SUPERVISOR_DECISION):
            target = self.lines.get(event.step_path)
            if target is not None:
                target.note = event.message
        elif event.type == E.TASK_EVENT_TYPE_CLEANING_UP:  # what ran is cancelled; the handlers start next
            self.outcome = f"cleaning up: {event.message}"
            for pending in self.lines.values():
                if pending.status in ("running", "retrying", "waiting"):
                    pending.status = "cancelled"
        elif event.type in (E.TASK_EVENT_TYPE_COMPLETED, E.TASK_EVENT_TYPE_FAILED, E.TASK_EVENT_TYPE_CANCELLED):
            self.outcome = f"{E.Name(event.type).removeprefix('TASK_EVENT_TYPE_')}: {event.message}"
            for pending in self.lines.values():
                if pending.status in ("running", "retrying") and event.type == E.TASK_EVENT_TYPE_CANCELLED:
                    pending.status = "cancelled"

    def render(self) -> Tree:
        title = f"task [bold]{self.task_id}[/]" + (f"  {escape(self.outcome)}" if self.outcome else "")
        root = Tree(title)
        branches: dict[str, Tree] = {}
        for path in self.lines:  # insertion order = start order
            line = self.lines[path]
            parent_path = path.rsplit("/", 1)[0] if "/" in path else ""
            parent = branches.get(parent_path, root)
            elapsed = (line.ended or line.started) - line.started if line.ended else 0.0
            label = f"{ICONS.get(line.status, '')} {escape(path.rsplit('/', 1)[-1])}"
            if line.protocol:
                label += f" [dim]\\[{escape(line.protocol)}][/]"
            if line.attempt > 1:
                label += f" [yellow]attempt {line.attempt}[/]"
            if line.ended:
                label += f" [dim]{elapsed * 1000:.0f} ms[/]"
            if line.note:
                label += f" [dim]{escape(line.note[:80])}[/]"
            branches[path] = parent.add(label)
        return root
