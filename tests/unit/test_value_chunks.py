"""Large values in chunks (engine/value_chunks.py): a chunked value is stored as chunks and a
manifest and reads back whole; a conversation that grows by a turn a round sends and stores only
its new bytes (and a chunk or two around them), not the whole conversation again; a value whose
chunks are not all there reads as missing, never as other bytes; a written step's input is kept
in memory as its size and digest only, and a resumed run reads no step's input."""

from __future__ import annotations

import hashlib

import pytest

from mcp_sdk.proto import task_pb2
from mcp_server.engine.context import RunContext
from mcp_server.engine.payload import Payload
from mcp_server.engine.ports import StepRecord
from mcp_server.engine.records import STEP_INPUT, STEP_INPUT_REF, StoredValue, ValueSink, step_record
from mcp_server.engine.value_chunks import CHUNK_BYTES, FIRST_CHUNK_BYTES, chunk_digests, read_whole, split
from tests.contract.conftest import checkpoint

TOOLS = [{"name": "lookup", "description": "Finds a text", "parameters": {"type": "object"}}]


def conversation(rounds: int, answer_bytes: int) -> Payload:
    """What an agent's model is asked at round `rounds`: the question, then per round its call and
    the tool's answer (`answer_bytes` of text), then the tools."""
    messages: list[dict[str, object]] = [{"role": "user", "content": "what is in the files?"}]
    for n in range(1, rounds):
        messages.append({"role": "assistant", "tool_calls": [{"id": f"c{n}", "name": "lookup"}]})
        messages.append({"role": "tool", "tool_call_id": f"c{n}", "content": f"{n}:" + "x" * answer_bytes})
    return Payload.of_python({"messages": messages, "tools": TOOLS})


def test_chunks_put_together_are_the_value():
    data = conversation(8, 50_000).serialized()
    chunks = list(split(data))
    assert b"".join(chunk for _, chunk in chunks) == data
    assert len(chunks[0][1]) == FIRST_CHUNK_BYTES and all(len(c) <= CHUNK_BYTES for _, c in chunks)
    assert all(digest == hashlib.sha256(chunk).hexdigest() for digest, chunk in chunks)
    assert chunk_digests(data) is None  # a serialized value is never taken for a manifest


def test_a_growing_conversation_stores_its_new_bytes_only():
    chunked, whole = ValueSink(chunked_from=64 * 1024), ValueSink()
    sent_chunked = sent_whole = 0
    for rounds in range(1, 21):
        value = conversation(rounds, 50_000)
        for sink in (chunked, whole):
            sink.encode(value, STEP_INPUT, STEP_INPUT_REF)
        taken_chunked, taken_whole = chunked.take(), whole.take()
        chunked.written(taken_chunked)
        whole.written(taken_whole)
        sent_chunked += sum(map(len, taken_chunked.values()))
        sent_whole += sum(map(len, taken_whole.values()))
        if rounds > 2:  # a turn of ~50 KB, the chunk the old end was in, the first chunk and the manifest
            assert sum(map(len, taken_chunked.values())) < 50_000 + 2 * CHUNK_BYTES + FIRST_CHUNK_BYTES + 1024
    assert sent_whole > 9_000_000  # 20 rounds: 0.05 + 0.1 + ... + 0.95 MB
    assert sent_chunked < sent_whole / 6


@pytest.mark.asyncio
async def test_a_chunked_value_reads_back_whole_or_not_at_all(running):
    store, claimed, token = running
    sink = ValueSink(chunked_from=64 * 1024)
    big, small = conversation(6, 40_000), Payload.of_python({"text": "y" * 5000})
    for value in (big, small):
        sink.encode(value, STEP_INPUT, STEP_INPUT_REF)
    values = sink.take()
    listed = chunk_digests(values[big.sha256])
    assert listed is not None and len(listed) == len(list(split(big.serialized())))
    assert chunk_digests(values[small.sha256]) is None  # below the size: whole
    seen: set[str] = set()
    without_one = {d: v for d, v in values.items() if d != listed[3]}
    await store.tasks.save_checkpoint(checkpoint(claimed, token, 2, [], [], without_one))
    found = await read_whole(store.tasks, claimed.task_id, [big.sha256, small.sha256], seen)
    assert found == {small.sha256: small.serialized()}  # a chunk is missing: the value is too
    await store.tasks.save_checkpoint(checkpoint(claimed, token, 2, [], [], {listed[3]: values[listed[3]]}))
    found = await read_whole(store.tasks, claimed.task_id, [big.sha256, small.sha256], seen)
    assert found == {big.sha256: big.serialized(), small.sha256: small.serialized()}
    assert seen == set(listed)


def test_a_written_input_is_kept_as_its_size_and_digest_and_recorded_the_same():
    sink = ValueSink(chunked_from=64 * 1024)
    state = task_pb2.StepState(path="helper/think#3", kind="step")
    big, small = conversation(4, 30_000), Payload.of_python({"text": "short"})
    assert sink.release(big) is big  # not stored yet: the bytes must still be sent
    first = step_record(state, big, small, sink)
    sink.written(sink.take())
    kept = sink.release(big)
    assert kept == StoredValue(big.size, big.sha256)
    assert step_record(state, kept, small, sink) == first  # a rewrite of the record (its end) is the same
    assert sink.release(small) is small and sink.take() == {}  # inline: kept as it is


class ReadsSeen:
    """The real store, noting which values a caller reads."""

    def __init__(self, store):
        self.store, self.read = store, []

    def __getattr__(self, name):
        return getattr(self.store, name)

    async def read_values(self, task_id, digests):
        self.read.extend(digests)
        return await self.store.read_values(task_id, digests)


@pytest.mark.asyncio
async def test_a_resumed_run_reads_its_steps_outputs_and_not_their_inputs(running):
    store, claimed, token = running
    sink = ValueSink(chunked_from=64 * 1024)
    asked, said = conversation(5, 30_000), Payload.of_python({"text": "y" * 5000})
    state = task_pb2.StepState(path="helper/think#5", kind="step", status=task_pb2.STEP_STATUS_COMPLETED)
    record = step_record(state, asked, said, sink)
    await store.tasks.save_checkpoint(
        checkpoint(claimed, token, 2, [], [StepRecord(0, state.path, record)], sink.take())
    )
    claimed.step_count = 1
    spy = ReadsSeen(store.tasks)
    run = RunContext(task=claimed, store=spy, caller=None, lease_token=token, task_input=Payload.of_python({}))
    await run.restore()
    assert spy.read == [said.sha256]  # not the 120 KB conversation the model was asked
    assert run._steps[state.path].input == StoredValue(asked.size, asked.sha256)
    assert run._steps[state.path].output.python() == {"text": "y" * 5000}
    assert run._record(state.path) == record  # written again, it refers to the same input
