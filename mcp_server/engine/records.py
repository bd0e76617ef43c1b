"""How a run's state is laid out for the store: step records, the live header, shared values.

A value of SHARED_VALUE_BYTES or more is stored once per task in a content-addressed value
store and referenced (ValueRef) from every record that holds it: a step's output and the next
step's input are one stored copy. Smaller values are written inline. Records are assembled
by appending length-delimited fields to a serialized StepState, so a value's bytes (already
serialized once, by the Payload) are never copied into a new message.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mcp_sdk.proto import task_pb2
from mcp_server.engine.payload import Payload, length_delimited
from mcp_server.engine.ports import TaskStore
from mcp_server.engine.value_chunks import manifest, read_whole, split
from mcp_server.errors import Unavailable

SHARED_VALUE_BYTES = 1024

# field numbers in task.proto
STEP_OUTPUT, STEP_INPUT, STEP_OUTPUT_REF, STEP_INPUT_REF = 6, 13, 14, 15
TASK_INPUT_REF, TASK_RESULT, TASK_RESULT_REF = 17, 6, 18


@dataclass(frozen=True)
class StoredValue:
    """A value the store holds, kept in memory as its size and digest only: a written step's
    input, which nothing reads again while the run goes on (an agent's rounds each hold the whole
    conversation)."""

    size: int
    sha256: str


@dataclass
class ValueSink:
    """The task's content-addressed values: which the store holds, which the next write adds."""

    stored: set[str] = field(default_factory=set)
    unsent: dict[str, bytes] = field(default_factory=dict)
    chunked_from: int = 0  # values of this size or more are stored in chunks (value_chunks.py); 0: never

    def encode(
        self, payload: Payload | StoredValue, inline_field: int, ref_field: int, inline_below: int = SHARED_VALUE_BYTES
    ) -> bytes:
        """The record bytes that hold `payload`: inline, or as a reference to a shared copy."""
        if isinstance(payload, StoredValue):
            return length_delimited(
                ref_field, task_pb2.ValueRef(size_bytes=payload.size, sha256=payload.sha256).SerializeToString()
            )
        if payload.size < inline_below:
            return length_delimited(inline_field, payload.serialized())
        digest = payload.sha256
        if digest not in self.stored and digest not in self.unsent:
            self._add(payload, digest)
        return length_delimited(
            ref_field, task_pb2.ValueRef(size_bytes=payload.size, sha256=digest).SerializeToString()
        )

    def _add(self, payload: Payload, digest: str) -> None:
        """Send `payload` with the next write: whole, or as the chunks the store lacks and its manifest."""
        if payload.size < self.chunked_from or self.chunked_from <= 0:
            self.unsent[digest] = payload.serialized()
            return
        listed = []
        for chunk_digest, chunk in split(payload.serialized()):
            listed.append(chunk_digest)
            if chunk_digest not in self.stored:
                self.unsent.setdefault(chunk_digest, chunk)
        self.unsent[digest] = manifest(listed)

    def release(self, payload: Payload | StoredValue | None) -> Payload | StoredValue | None:
        """What of `payload` a record needs once it is stored: its size and digest if it is shared."""
        if isinstance(payload, Payload) and payload.size >= SHARED_VALUE_BYTES and payload.sha256 in self.stored:
            return StoredValue(payload.size, payload.sha256)
        return payload

    def take(self) -> dict[str, bytes]:
        """The values to send with the next write (they count as stored once it succeeds)."""
        values, self.unsent = self.unsent, {}
        return values

    def written(self, values: dict[str, bytes]) -> None:
        self.stored.update(values)

    def rejected(self, values: dict[str, bytes]) -> None:
        for digest, data in values.items():
            self.unsent.setdefault(digest, data)


def step_record(
    state: task_pb2.StepState, input_value: Payload | StoredValue | None, output: Payload | None, sink: ValueSink
) -> bytes:
    """A StepState (without input or output) plus its values, serialized for the store."""
    data = state.SerializeToString()
    if input_value is not None:
        data += sink.encode(input_value, STEP_INPUT, STEP_INPUT_REF)
    if output is not None:
        data += sink.encode(output, STEP_OUTPUT, STEP_OUTPUT_REF)
    return data


def value_of(inline: Payload | None, ref: task_pb2.ValueRef | None, values: dict[str, bytes]) -> Payload | None:
    """Rebuild a stored value from its inline form or its reference (and the fetched values)."""
    if ref is not None and ref.sha256:
        data = values.get(ref.sha256)
        return None if data is None else Payload.of_bytes(data)
    return inline


def take_input(state: task_pb2.StepState) -> Payload | StoredValue | None:
    """Move a stored step's input out of its record: inline, or its size and digest (a run that
    resumes reads no step's input: only a record written again needs it, as a reference)."""
    value: Payload | StoredValue | None = None
    if state.HasField("input"):
        value = Payload.of_bytes(state.input.SerializeToString(deterministic=True))
    elif state.input_ref.sha256:
        value = StoredValue(state.input_ref.size_bytes, state.input_ref.sha256)
    state.ClearField("input")
    state.ClearField("input_ref")
    return value


def take_value(state: task_pb2.StepState, name: str, values: dict[str, bytes]) -> Payload | None:
    """Move a stored value (inline, or by reference) out of a step record into a Payload."""
    inline = None
    if state.HasField(name):
        inline = Payload.of_bytes(getattr(state, name).SerializeToString(deterministic=True))
    ref = getattr(state, f"{name}_ref") if state.HasField(f"{name}_ref") else None
    state.ClearField(name)
    state.ClearField(f"{name}_ref")
    return value_of(inline, ref, values)


async def task_input(store: TaskStore, task: task_pb2.Task) -> Payload:
    """A task's input: inline in the task, or in its value store when it is large."""
    if not task.input_ref.sha256:
        return Payload.of_struct(task.input_data)
    return Payload.of_bytes(await stored_value(store, task, task.input_ref.sha256))


async def stored_value(store: TaskStore, task: task_pb2.Task, digest: str) -> bytes:
    """One of a task's stored values; Unavailable when the store does not have it."""
    values = await read_whole(store, task.task_id, [digest])
    if digest not in values:
        raise Unavailable(f"task {task.task_id}: its value {digest} is missing from the store")
    return values[digest]


@dataclass
class RunStep:
    """One node execution as a run holds it: its state (without values) and its values."""

    index: int
    state: task_pb2.StepState
    input: Payload | StoredValue | None = None  # once written, only its size and digest if shared
    output: Payload | None = None
    started_ns: int = 0  # when it began, once this life of the run has begun or resumed it (else 0)
