"""Checks every RPC family shares: required fields, page sizes, and who may see a task."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from google.protobuf.message import Message

from mcp_sdk.proto import task_pb2
from mcp_server.auth import Principal
from mcp_server.engine.ports import TaskStore
from mcp_server.errors import FieldViolation, InvalidArgument, task_not_found
from mcp_server.settings import Limits
from mcp_server.task_views import RESPONSE_MARGIN_BYTES

M = TypeVar("M", bound=Message)


def require(field: str, value: str) -> None:
    """InvalidArgument naming `field` when it is empty."""
    if not value:
        raise InvalidArgument(f"{field} is required", violations=[FieldViolation(field, "is required")])


def page_size(requested: int, limits: Limits) -> int:
    """The page size to use: the default (50) for 0, at most the server's limit."""
    if requested < 0:
        raise InvalidArgument(
            "page_size must not be negative",
            violations=[FieldViolation("page_size", "must be 0 (default) or positive")],
        )
    return min(requested or 50, limits.max_page_size)


def fitting(items: Sequence[M], limits: Limits, reserved: int = 0) -> list[M]:
    """The first of `items` (at least one) that one response carries together within the message
    limit, less a margin for the rest of the response (and `reserved` bytes): a page of large
    items (workflows of 1 MB, say) is cut short, and the caller's page token goes on after the
    last one shown."""
    room = limits.max_message_bytes - RESPONSE_MARGIN_BYTES - reserved
    shown: list[M] = []
    for item in items:
        room -= item.ByteSize() + 8
        if shown and room < 0:
            break
        shown.append(item)
    return shown


def status_violations(statuses: Sequence[int], field: str) -> list[FieldViolation]:
    """One violation for each of `statuses` that is no task status (UNSPECIFIED, or a number the
    contract does not define): a filter on it would match nothing on one store and everything on another."""
    known = task_pb2.TaskStatus.values()
    return [
        FieldViolation(
            f"{field}[{i}]", f"{status} is not a task status: use TASK_STATUS_PENDING ... TASK_STATUS_WAITING"
        )
        for i, status in enumerate(statuses)
        if status == task_pb2.TASK_STATUS_UNSPECIFIED or status not in known
    ]


def check_statuses(statuses: Sequence[int], field: str) -> None:
    """InvalidArgument naming each of `statuses` that is no task status."""
    if wrong := status_violations(statuses, field):
        raise InvalidArgument(f"{wrong[0].field}: {wrong[0].description}", violations=wrong)


def micros(message: Message, field: str) -> int:
    """A Timestamp field of `message` in Unix microseconds; 0 when it is not set."""
    return int(getattr(message, field).ToMicroseconds()) if message.HasField(field) else 0


async def visible_task(tasks: TaskStore, task_id: str, principal: Principal) -> task_pb2.Task:
    """The task's header, if `principal` may see it: its owner, or an admin. Another principal's
    task answers NOT_FOUND, exactly like a task that does not exist."""
    require("task_id", task_id)
    task = await tasks.get_task(task_id)
    if task is None or not (principal.is_admin or task.owner == principal.name):
        raise task_not_found(task_id)
    return task
