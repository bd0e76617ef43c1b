"""What a new task is queued under (its owner's group, or its workflow's concurrency key value)
and what its key's strategy does when the key is full."""

from __future__ import annotations

import json
from collections.abc import Mapping

from google.protobuf import struct_pb2

from mcp_sdk.proto import task_pb2, workflow_pb2
from mcp_server.engine.cel import ExpressionError
from mcp_server.engine.payload import struct_to_python
from mcp_server.engine.plan import Plan
from mcp_server.engine.ports import GroupMember, QueueGroup
from mcp_server.errors import FieldViolation, InvalidArgument

MAX_KEY_LENGTH = 256

# the reason a task cancelled for its concurrency key gives (see ConcurrencyStrategy)
CONCURRENCY_LIMIT = "CONCURRENCY_LIMIT"


def queue_group(
    plan: Plan, input_data: struct_pb2.Struct | None, labels: Mapping[str, str], owner: str
) -> tuple[QueueGroup, str]:
    """The group a task of `plan` is queued under, and its concurrency key's value ('' without
    one). InvalidArgument when the key cannot be evaluated over this input."""
    concurrency = plan.concurrency
    if concurrency is None:
        return QueueGroup.of_owner(owner), ""
    key = owner
    if concurrency.key is not None:
        variables = {
            "input": struct_to_python(input_data) if input_data is not None else {},
            "labels": dict(labels),
            "owner": owner,
        }
        try:
            found = concurrency.key.evaluate(variables)
        except ExpressionError as exc:
            raise _bad_key(f"the workflow's concurrency key does not evaluate on this task: {exc}") from None
        key = found if isinstance(found, str) else json.dumps(found, sort_keys=True, separators=(",", ":"))
    if len(key) > MAX_KEY_LENGTH:
        raise _bad_key(f"the workflow's concurrency key gave {len(key)} characters; the limit is {MAX_KEY_LENGTH}")
    return QueueGroup.of_key(plan.workflow_id, key, concurrency.max_running), key


def _bad_key(problem: str) -> InvalidArgument:
    return InvalidArgument(problem, violations=[FieldViolation("input_data", problem)], reason="BAD_CONCURRENCY_KEY")


def full_for_newest(members: list[GroupMember], max_running: int) -> bool:
    """For CANCEL_NEWEST: whether a key's running and queued tasks fill its cap (waiting ones do not count)."""
    taken = sum(1 for m in members if m.running or (not m.leased and m.status != task_pb2.TASK_STATUS_WAITING))
    return taken >= max_running


CANCEL_IN_PROGRESS = workflow_pb2.CONCURRENCY_STRATEGY_CANCEL_IN_PROGRESS
CANCEL_NEWEST = workflow_pb2.CONCURRENCY_STRATEGY_CANCEL_NEWEST
