"""A task's events: made here, and kept such that every watch can send them. One event is at
most `Limits.max_event_bytes`, and the events of one batched message (WatchTaskEvents,
SubmitAndWatchTask) at most about as many bytes together.

What a plugin streams as progress or a supervisor gives as feedback becomes an event's message
and data. Unbounded, one such event (or a batch of them) could pass gRPC's message limit, and
then no watch could deliver the task's log past it: the server's send failed with
RESOURCE_EXHAUSTED on every try, and a client of the protos keeps gRPC's 4 MB receive limit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping
from typing import Any

from google.protobuf import struct_pb2, timestamp_pb2

from mcp_sdk.proto import task_pb2
from mcp_server.engine.texts import clipped
from mcp_server.engine.values import python_to_value

# the names of left-out fields an event lists, and how much of each name
MAX_NAMED_FIELDS = 10
MAX_NAME_CHARS = 100
# what a field costs besides its key and value in a Struct's encoding (tags and lengths)
FIELD_OVERHEAD = 12


def now() -> timestamp_pb2.Timestamp:
    """The current time (Timestamp.GetCurrentTime goes through datetime: five times slower)."""
    return timestamp_of(time.time_ns())


def timestamp_of(nanos: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=nanos // 1_000_000_000, nanos=nanos % 1_000_000_000)


def make_event(task_id: str, sequence: int, type_: int, **fields: Any) -> task_pb2.TaskEvent:
    data = fields.pop("data", None)
    event = task_pb2.TaskEvent(task_id=task_id, sequence=sequence, type=type_, time=now(), **fields)  # type: ignore[arg-type]
    if data:
        _fill_data(event.data, data)
    return event


def _fill_data(struct: struct_pb2.Struct, data: Mapping[str, Any]) -> None:
    """An event's data: flat scalars are set directly (most events), anything else converted."""
    for key, value in data.items():
        if isinstance(value, str):
            struct.fields[key].string_value = value
        elif isinstance(value, bool):
            struct.fields[key].bool_value = value
        elif isinstance(value, (int, float)) and math.isfinite(value):
            struct.fields[key].number_value = value
        else:
            struct.fields[key].CopyFrom(python_to_value(value))


def bounded(event: task_pb2.TaskEvent, most: int) -> task_pb2.TaskEvent:
    """`event` when it serializes to at most `most` bytes; else a copy with its message clipped
    and, if that is not enough, its largest data fields left out: `data.truncated_fields` names
    them (the first few) and `data.truncated_bytes` says how large the event was."""
    size = event.ByteSize()
    if size <= most:
        return event
    trimmed = task_pb2.TaskEvent()
    trimmed.CopyFrom(event)
    trimmed.message = clipped(trimmed.message)
    excess = trimmed.ByteSize() - most
    if excess <= 0:
        return trimmed
    fields = trimmed.data.fields
    by_size = sorted(fields, key=lambda name: len(name.encode()) + fields[name].ByteSize(), reverse=True)
    left_out: list[str] = []
    # the note itself: clipped names (with their "… (N more characters)"), 4 bytes a character at most
    note = 64 + (MAX_NAMED_FIELDS + 1) * ((MAX_NAME_CHARS + 32) * 4 + FIELD_OVERHEAD)
    for name in by_size:
        if excess + note <= 0:
            break
        excess -= len(name.encode()) + fields[name].ByteSize() + FIELD_OVERHEAD
        left_out.append(name)
    for name in left_out:
        del fields[name]
    if left_out:
        named = [clipped(name, MAX_NAME_CHARS) for name in left_out[:MAX_NAMED_FIELDS]]
        if len(left_out) > MAX_NAMED_FIELDS:
            named.append(f"… {len(left_out) - MAX_NAMED_FIELDS} more")
        trimmed.data.update({"truncated_fields": named, "truncated_bytes": size})
    return trimmed


def in_messages(events: list[task_pb2.TaskEvent], most: int) -> Iterator[list[task_pb2.TaskEvent]]:
    """`events` in runs of at most `most` bytes together (one event on its own when it is larger,
    bounded to `most`), in order: what one batched message carries; none for no events."""
    sizes = [event.ByteSize() for event in events]
    if not events:
        return
    if sum(sizes) <= most:
        yield events  # nearly always: no copy
        return
    run: list[task_pb2.TaskEvent] = []
    total = 0
    for event, size in zip(events, sizes):
        if size > most:
            event = bounded(event, most)
            size = event.ByteSize()
        if run and total + size > most:
            yield run
            run, total = [], 0
        run.append(event)
        total += size
    if run:
        yield run
