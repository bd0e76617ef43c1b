"""Messages as the plain values the console's templates and scripts show: names without their
enum prefixes, times as ISO text, durations in milliseconds, values as indented JSON text."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from google.protobuf import timestamp_pb2

from mcp_sdk.conversations import Conversation, transcript
from mcp_sdk.proto import protocol_pb2, registry_pb2, task_pb2
from mcp_sdk.values import struct_to_dict, value_to_python

# A value longer than this (as JSON text) is cut in the page, with a link to the whole of it.
PREVIEW_CHARS = 20_000
# An event as the page receives it: the page shows its message and reads a few small data fields
# (a wait's signal), while an event may be 1 MB (MCP_LIMIT_MAX_EVENT_BYTES), mostly data the page
# never shows, and a task's log may hold thousands of them. Past these, a message is clipped and a
# data field left out (named in the event's "left_out" list)
PAGE_MESSAGE_CHARS = 4096
PAGE_DATA_FIELD_BYTES = 1024
# An agent's conversation on a task page: each turn cut at SHOWN_TURN_CHARS, at most
# SHOWN_TURN_LINES lines (the first ones and the latest), SHOWN_AGENTS agents, and what a round was
# asked read only up to SHOWN_VALUE_BYTES (a conversation may be 16 MB, a task hold a map of agents)
SHOWN_TURN_CHARS = 4000
SHOWN_TURN_LINES = 300
SHOWN_FIRST_LINES = 20
SHOWN_AGENTS = 20
SHOWN_VALUE_BYTES = 1024 * 1024
TASK_STATUSES = ("pending", "running", "waiting", "completed", "failed", "cancelled")


def enum_name(enum: Any, number: int, prefix: str) -> str:
    return str(enum.Name(number)).removeprefix(prefix)


def task_status(status: int) -> str:
    return enum_name(task_pb2.TaskStatus, status, "TASK_STATUS_")


def event_type(kind: int) -> str:
    return enum_name(task_pb2.TaskEventType, kind, "TASK_EVENT_TYPE_")


def iso(stamp: timestamp_pb2.Timestamp) -> str:
    """RFC 3339 in UTC with milliseconds, or "" when unset."""
    if not stamp.seconds and not stamp.nanos:
        return ""
    return stamp.ToDatetime().isoformat(timespec="milliseconds") + "Z"


def millis_between(start: timestamp_pb2.Timestamp, end: timestamp_pb2.Timestamp) -> int | None:
    if not (start.seconds or start.nanos) or not (end.seconds or end.nanos):
        return None
    return round((end.ToNanoseconds() - start.ToNanoseconds()) / 1e6)


def json_text(value: Any) -> str:
    """A plain value as indented JSON, cut to PREVIEW_CHARS."""
    text = json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)
    return (
        text
        if len(text) <= PREVIEW_CHARS
        else text[:PREVIEW_CHARS] + f"\n… ({len(text) - PREVIEW_CHARS:,} more characters)"
    )


def ref_view(ref: task_pb2.ValueRef) -> dict[str, Any]:
    return {
        "size_bytes": ref.size_bytes,
        "sha256": ref.sha256,
        "step_path": ref.step_path,
        "field": "input" if ref.field == task_pb2.VALUE_FIELD_INPUT else "output",
    }


def task_view(task: task_pb2.Task) -> dict[str, Any]:
    """A task's header: everything but its steps."""
    return {
        "task_id": task.task_id,
        "workflow_id": task.workflow_id,
        "workflow_version": task.workflow_version,
        "status": task_status(task.status),
        "priority": task.priority,
        "owner": task.owner,
        "request_id": task.request_id,
        "labels": dict(sorted(task.labels.items())),
        "created": iso(task.create_time),
        "queue_deadline": iso(task.queue_deadline),
        "started": iso(task.start_time),
        "ended": iso(task.end_time),
        "duration_ms": millis_between(task.start_time, task.end_time),
        "queued_ms": millis_between(task.create_time, task.start_time),
        "last_sequence": task.last_sequence,
        "step_count": task.step_count,
        "input": json_text(struct_to_dict(task.input_data)) if not task.HasField("input_ref") else None,
        "input_ref": ref_view(task.input_ref) if task.HasField("input_ref") else None,
        "result": json_text(value_to_python(task.result)) if task.HasField("result") else None,
        "result_ref": ref_view(task.result_ref) if task.HasField("result_ref") else None,
        "error": {"code": task.error.code, "message": task.error.message}
        if task.error.code or task.error.message
        else None,
        "terminal": task.status
        in (task_pb2.TASK_STATUS_COMPLETED, task_pb2.TASK_STATUS_FAILED, task_pb2.TASK_STATUS_CANCELLED),
        "rerun_of": task.rerun_of,
        "cancel_request": {
            "reason": task.cancel_request.reason,
            "time": iso(task.cancel_request.time),
            "outcome": task.cancel_request.outcome.replace("_", " "),
        }
        if task.HasField("cancel_request")
        else None,
        "concurrency_key": task.concurrency_key,
        "usage": ", ".join(f"{name} {amount:g}" for name, amount in sorted(task.usage.items())),
        "rerun_from_step_path": task.rerun_from_step_path,
        "reruns": list(task.reruns),
    }


def step_view(step: task_pb2.StepState, below: Mapping[str, float] | None = None) -> dict[str, Any]:
    """One step state: status, attempts, time, and its input, output and error (or references to
    them); `below`: what the steps under a composite node used in all (mcp_sdk.usage)."""
    return {
        "path": step.path,
        "node_id": step.node_id,
        "protocol": step.protocol,
        "kind": step.kind,
        "status": enum_name(task_pb2.StepStatus, step.status, "STEP_STATUS_"),
        "attempts": step.attempts,
        "started": iso(step.start_time),
        "ended": iso(step.end_time),
        "duration_ms": millis_between(step.start_time, step.end_time),
        "fallback": step.fallback_protocol,
        # while it waits out a retry's backoff: which attempt of its protocol is due, and when
        "retry": (step.failed_attempts + 1, iso(step.retry_time)) if step.HasField("retry_time") else None,
        "reused": step.reused,
        "usage": ", ".join(f"{name} {amount:g}" for name, amount in sorted(step.usage.items())),
        "usage_below": ", ".join(f"{name} {amount:g}" for name, amount in sorted((below or {}).items())),
        "waits_for": waits_for(step.wait) if step.status == task_pb2.STEP_STATUS_WAITING else "",
        "deadline": iso(step.wait.deadline),
        "input": json_text(value_to_python(step.input)) if step.HasField("input") else None,
        "input_ref": ref_view(step.input_ref) if step.HasField("input_ref") else None,
        "output": json_text(value_to_python(step.output)) if step.HasField("output") else None,
        "output_ref": ref_view(step.output_ref) if step.HasField("output_ref") else None,
        "error": {"code": step.error.code, "message": step.error.message}
        if step.error.code or step.error.message
        else None,
    }


def event_view(event: task_pb2.TaskEvent) -> dict[str, Any]:
    """One event, for the page's script: its message clipped to PAGE_MESSAGE_CHARS, its data
    without the fields larger than PAGE_DATA_FIELD_BYTES (listed in "left_out")."""
    fields = event.data.fields
    large = sorted(name for name in fields if fields[name].ByteSize() > PAGE_DATA_FIELD_BYTES)
    data = {name: value_to_python(fields[name]) for name in fields if name not in large}
    message = event.message
    if len(message) > PAGE_MESSAGE_CHARS:
        message = f"{message[:PAGE_MESSAGE_CHARS]}… ({len(message) - PAGE_MESSAGE_CHARS:,} more characters)"
    return {
        "sequence": event.sequence,
        "time": iso(event.time),
        "type": event_type(event.type),
        "step_path": event.step_path,
        "protocol": event.protocol,
        "attempt": event.attempt,
        "message": message,
        "data": data or None,
        "left_out": large,
    }


def protocol_view(entry: registry_pb2.RegisteredProtocol) -> dict[str, Any]:
    """One instance of a protocol: where it is, how it is, what it offers and what is in use."""
    manifest = entry.manifest
    resources = {
        name: getattr(entry.capacity, name)
        for name in ("cpu_millis", "memory_mb", "gpus")
        if getattr(entry.capacity, name)
    }
    in_use = {name: getattr(entry.capacity_in_use, name) for name in resources}
    return {
        "name": manifest.name,
        "version": manifest.version,
        "description": manifest.description,
        "type": enum_name(protocol_pb2.ProtocolType, manifest.type, "PROTOCOL_TYPE_"),
        "address": entry.address,
        "health": enum_name(registry_pb2.HealthState, entry.health, "HEALTH_STATE_"),
        "breaker": enum_name(registry_pb2.BreakerState, entry.breaker, "BREAKER_STATE_"),
        "ejected_until": iso(entry.ejected_until),
        "calls_in_flight": entry.calls_in_flight,
        "capacity": ", ".join(f"{name} {in_use[name]}/{amount}" for name, amount in resources.items()) or "unlimited",
        "needs": {
            name: getattr(manifest.resources, name)
            for name in ("cpu_millis", "memory_mb", "gpus")
            if getattr(manifest.resources, name)
        },
        "max_concurrency": manifest.max_concurrency,
    }


def rate_limit_view(limit: registry_pb2.RateLimit) -> dict[str, Any]:
    """One rate limit: its rule and what a call could take now (and, for one key read by itself,
    the template it falls under)."""
    period = limit.period.ToNanoseconds() / 1e9
    view = {
        "key": limit.key,
        "limit": f"{limit.limit:g}",
        "period": f"{period:g} s",
        "burst": f"{limit.burst:g}",
        "available": f"{limit.available:.2f}".rstrip("0").rstrip("."),
    }
    if limit.template:
        view["template"] = limit.template
    if limit.HasField("next_unit") and (wait := limit.next_unit.ToNanoseconds() / 1e9) > 0:
        view["next_unit"] = f"{wait:.1f} s"
    if limit.waiting:
        view["waiting"] = str(limit.waiting)
    return view


def waits_for(wait: task_pb2.StepWait) -> str:
    """What a waiting step waits for, in words."""
    if wait.event:
        return f"event {wait.event}" + (f" with key {wait.key}" if wait.key else "")
    if wait.rate_limit_keys:
        return "units of rate limit " + ", ".join(wait.rate_limit_keys)
    return wait.signal or "its time"


def conversation_view(conversation: Conversation) -> dict[str, Any]:
    """An agent's conversation as the task page shows it: turn by turn, each cut at 4,000 characters,
    its first lines and its latest past SHOWN_TURN_LINES."""
    lines = transcript(conversation, SHOWN_TURN_CHARS)
    if len(lines) > SHOWN_TURN_LINES:
        hidden = len(lines) - SHOWN_TURN_LINES
        note = ("...", f"{hidden} lines not shown here (mcp task conversation TASK_ID shows them all)")
        lines = [*lines[:SHOWN_FIRST_LINES], note, *lines[SHOWN_FIRST_LINES + hidden :]]
    return {**conversation.to_json(), "lines": lines}
