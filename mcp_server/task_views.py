"""Tasks as responses: assembled from their stored parts, and always small enough to send.

A stored step record holds a value inline when it is small and by reference (SHA-256, size)
when it is not (engine/records.py). A response inlines every value up to the inline limit
(`MCP_LIMIT_INLINE_VALUE_BYTES`, 64 KB) and leaves larger ones as a ValueRef that names where
to read them (ReadValue). Step states are added while the response stays within its byte
budget (the message limit less a margin); what does not fit is left for ListTaskSteps, and a
page token says where to go on.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from google.protobuf import struct_pb2

from mcp_sdk.proto import task_pb2
from mcp_server.engine.ports import TaskStore
from mcp_server.engine.texts import MAX_MESSAGE_CHARS, clipped
from mcp_server.engine.value_chunks import read_whole
from mcp_server.errors import FieldViolation, InvalidArgument, NotFound
from mcp_server.settings import Limits

INPUT, OUTPUT = task_pb2.VALUE_FIELD_INPUT, task_pb2.VALUE_FIELD_OUTPUT
RESPONSE_MARGIN_BYTES = 64 * 1024
MAX_LISTED_CHILDREN = 1000  # of a supervisor's decision, in a step state too large to send whole
CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class StepsPage:
    steps: list[task_pb2.StepState]
    next_index: int | None  # where the next page starts, None at the end


class TaskViews:
    """Builds task responses from a store, within the limits."""

    def __init__(self, store: TaskStore, limits: Limits) -> None:
        self.store = store
        self.inline_bytes = limits.inline_value_bytes
        self.budget = max(limits.max_message_bytes - RESPONSE_MARGIN_BYTES, 64 * 1024)

    # ---- tasks ------------------------------------------------------------------------------
    def basic(self, header: task_pb2.Task) -> task_pb2.Task:
        """A task without its step states: its input and result are inline unless large (refs
        the store kept say so already: they are at or above the inline limit)."""
        for name, field in (("input_ref", INPUT), ("result_ref", OUTPUT)):
            ref = getattr(header, name)
            if ref.sha256:
                ref.step_path = ""
                ref.field = field
        return header

    async def full(self, header: task_pb2.Task, budget: int | None = None) -> task_pb2.Task:
        """The task with as many step states as fit in `budget` (default: one response)."""
        task = self.basic(header)
        room = (self.budget if budget is None else budget) - task.ByteSize()
        page = await self.steps(task.task_id, 0, max(task.step_count, 1), room)
        task.steps.extend(page.steps)
        if page.next_index is not None:
            task.steps_next_page_token = steps_token(task.task_id, page.next_index)
        return task

    async def many(self, headers: Sequence[task_pb2.Task], with_steps: bool) -> list[task_pb2.Task]:
        """As many of `headers` as fit in one response, in order (the caller pages on from the
        last one returned); with steps, each as full as the remaining room allows."""
        shown: list[task_pb2.Task] = []
        used = 0
        for header in headers:
            task = self.basic(header)
            if with_steps:
                task = await self.full(task, self.budget - used)
            size = task.ByteSize() + 8
            if shown and used + size > self.budget:
                break
            shown.append(task)
            used += size
        return shown

    # ---- steps ------------------------------------------------------------------------------
    async def steps(self, task_id: str, start: int, limit: int, budget: int | None = None) -> StepsPage:
        """Step states from index `start`, at most `limit`, within `budget` bytes."""
        room = self.budget if budget is None else budget
        records = await self.store.read_steps(task_id, start, limit + 1)
        states = [task_pb2.StepState.FromString(r.data) for r in records]
        await self._inline(task_id, states[:limit])
        shown: list[task_pb2.StepState] = []
        used = 0
        for state in states[:limit]:
            size = state.ByteSize() + 8
            if not shown and size > room and budget is None:  # a page of its own is not enough
                state = fitted(state)
                size = state.ByteSize() + 8
            if used + size > room:
                break
            shown.append(state)
            used += size
        more = len(shown) < len(states)
        return StepsPage(shown, records[len(shown)].index if more else None)

    async def _inline(self, task_id: str, states: list[task_pb2.StepState]) -> None:
        """Replace each reference to a value within the inline limit by the value itself."""
        wanted: dict[str, list[tuple[task_pb2.StepState, str]]] = {}
        for state in states:
            for name, field in (("input", INPUT), ("output", OUTPUT)):
                ref: task_pb2.ValueRef = getattr(state, f"{name}_ref")
                if not ref.sha256:
                    continue
                if ref.size_bytes <= self.inline_bytes:
                    wanted.setdefault(ref.sha256, []).append((state, name))
                else:
                    ref.step_path = state.path
                    ref.field = field
        if not wanted:
            return
        values = await read_whole(self.store, task_id, wanted)
        for digest, holders in wanted.items():
            data = values.get(digest)
            if data is None:
                continue  # purged under our feet: the reference stays
            for state, name in holders:
                getattr(state, name).MergeFromString(data)
                state.ClearField(f"{name}_ref")

    # ---- values -----------------------------------------------------------------------------
    async def value_bytes(self, header: task_pb2.Task, step_path: str, field: int) -> bytes:
        """One value serialized as a google.protobuf.Value; NotFound names what is missing."""
        if not step_path:
            return await self._task_value(header, field)
        record = await self.store.read_step(header.task_id, step_path)
        if field == INPUT and step_path == header.rerun_from_step_path and header.rerun_input_ref.sha256:
            state = task_pb2.StepState.FromString(record.data) if record is not None else None
            if state is None or not (state.HasField("input") or state.input_ref.sha256):  # not started yet
                return await self._stored(header.task_id, header.rerun_input_ref.sha256)
        if record is None:
            raise NotFound(
                f"task {header.task_id} has no step {step_path!r}",
                reason="STEP_NOT_FOUND",
                violations=[
                    FieldViolation("step_path", "no step of this task has this path (ListTaskSteps lists them)")
                ],
                metadata={"task_id": header.task_id, "step_path": step_path},
            )
        state = task_pb2.StepState.FromString(record.data)
        name = "input" if field == INPUT else "output"
        if state.HasField(name):
            return bytes(getattr(state, name).SerializeToString())
        ref = getattr(state, f"{name}_ref")
        if ref.sha256:
            return await self._stored(header.task_id, ref.sha256)
        status = task_pb2.StepStatus.Name(state.status).removeprefix("STEP_STATUS_")
        raise NotFound(
            f"step {step_path!r} of task {header.task_id} has no {name} ({status}, kind {state.kind})",
            reason="VALUE_NOT_FOUND",
            violations=[FieldViolation("field", f"this step has no {name}")],
            metadata={"task_id": header.task_id, "step_path": step_path},
        )

    async def _task_value(self, header: task_pb2.Task, field: int) -> bytes:
        if field == INPUT:
            if header.input_ref.sha256:
                return await self._stored(header.task_id, header.input_ref.sha256)
            return bytes(struct_pb2.Value(struct_value=header.input_data).SerializeToString())
        if header.result_ref.sha256:
            return await self._stored(header.task_id, header.result_ref.sha256)
        if header.HasField("result"):
            return bytes(header.result.SerializeToString())
        status = task_pb2.TaskStatus.Name(header.status).removeprefix("TASK_STATUS_")
        raise NotFound(
            f"task {header.task_id} has no result ({status})",
            reason="VALUE_NOT_FOUND",
            violations=[FieldViolation("field", "the task has no result until it completes")],
            metadata={"task_id": header.task_id},
        )

    async def _stored(self, task_id: str, digest: str) -> bytes:
        found = await read_whole(self.store, task_id, [digest])
        if digest not in found:
            raise NotFound(
                f"value {digest} of task {task_id} is gone (the task was purged)",
                reason="VALUE_NOT_FOUND",
                metadata={"task_id": task_id},
            )
        return found[digest]


async def chunks(data: bytes, digest: str) -> AsyncIterator[task_pb2.ValueChunk]:
    """`data` as ValueChunks of at most CHUNK_BYTES (one, possibly empty, for a small value)."""
    for offset in range(0, max(len(data), 1), CHUNK_BYTES):
        yield task_pb2.ValueChunk(
            data=data[offset : offset + CHUNK_BYTES], offset=offset, size_bytes=len(data), sha256=digest
        )


def steps_token(task_id: str, index: int) -> str:
    return base64.urlsafe_b64encode(f"{task_id}:{index}".encode()).decode().rstrip("=")


def steps_start(task_id: str, token: str) -> int:
    """The index a ListTaskSteps page token says to start at; refuses another task's token."""
    if not token:
        return 0
    try:
        owner, index = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode().rsplit(":", 1)
        start = int(index)
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgument(
            "page_token is not a token this server issued",
            violations=[FieldViolation("page_token", "pass next_page_token from the previous page, unchanged")],
        ) from None
    if owner != task_id or start < 0:
        raise InvalidArgument(
            "page_token belongs to another task's steps",
            violations=[FieldViolation("page_token", f"this token pages the steps of another task, not {task_id}")],
        )
    return start


def fitted(state: task_pb2.StepState) -> task_pb2.StepState:
    """A step state made small enough for a response of its own. Its input and output are inline
    only up to the inline limit and its error is clipped, but the directive it stored holds the
    protocol's answer whole (up to a plugin's message limit): a supervisor decision's output is
    left out, replaced by `{"left_out_bytes": N, "read_as": ...}` naming the supervise node whose
    output it is (ReadValue reads it there), and the directive's texts are clipped."""
    trimmed = task_pb2.StepState()
    trimmed.CopyFrom(state)
    kind = trimmed.directive.WhichOneof("kind") if trimmed.HasField("directive") else None
    if kind == "next_state":
        trimmed.directive.next_state = clipped(trimmed.directive.next_state)
    if kind != "decision":
        return trimmed
    decision = trimmed.directive.decision
    if decision.HasField("output"):
        size = decision.output.ByteSize()
        decision.output.Clear()
        supervise_path = state.path.rsplit("/", 1)[0]
        decision.output.update({"left_out_bytes": size, "read_as": f"the output of step {supervise_path}"})
    decision.feedback = clipped(decision.feedback)
    decision.reason = clipped(decision.reason)
    per_child = MAX_MESSAGE_CHARS if len(decision.child_feedback) <= 8 else MAX_MESSAGE_CHARS // 8
    for child, feedback in list(decision.child_feedback.items()):
        decision.child_feedback[child] = clipped(feedback, per_child)
    del decision.retry_children[MAX_LISTED_CHILDREN:]
    return trimmed
