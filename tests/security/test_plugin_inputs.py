"""The bundled plugins as real processes, given the inputs that made them compute for minutes or
hours: texts of a megabyte shaped against their patterns (a backtracking regex engine is
quadratic on runs of capitalised words, dots or spaces), a sentence of thousands of joints, a
summary of hundreds of sentences (TextRank was cubic), rules that derive one fact a pass, a
validation pattern that backtracks exponentially. Each call must answer well inside its
deadline, and the plugin must still serve."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, struct_pb2

from mcp_sdk.proto import protocol_pb2, protocol_pb2_grpc
from tests.conftest import PluginProc, spawn_plugin
from tests.support.random_messages import RandomRequests

pytestmark = pytest.mark.asyncio
DEADLINE_SECONDS = 30  # each answers in under 2 s here; before, most ran for minutes to hours
MEGABYTE_TEXTS = {
    "capitalised words": "Ab " * 330_000,
    "acronyms": "AB " * 33_000,  # an entity each: 3 MB of answer
    "dots": "." * 1_000_000,
    "abbreviations": "a. " * 330_000,
    "short sentences": "The cat sat on the mat. " * 40_000,
    "spaces": " " * 1_000_000,
}
SUMMARY_OF_300 = " ".join(f"Sentence {i} talks of cats and dogs and {i % 7} birds." for i in range(300))


@pytest.fixture(scope="module")
def text_plugins() -> Iterator[dict[str, PluginProc]]:
    procs = {name: spawn_plugin(f"protocol_plugins.{name}") for name in ("cognitive", "writing", "basics")}
    yield procs
    for proc in procs.values():
        proc.process.kill()
        proc.process.wait(timeout=10)


async def execute(address: str, protocol: str, data: dict[str, Any]) -> protocol_pb2.ExecuteResponse:
    value = struct_pb2.Struct()
    json_format.ParseDict(data, value)
    options = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
    async with grpc.aio.insecure_channel(address, options=options) as channel:
        stub = protocol_pb2_grpc.ProtocolServiceStub(channel)
        request = protocol_pb2.ExecuteRequest(protocol=protocol, input=value)
        response: protocol_pb2.ExecuteResponse = await stub.Execute(request, timeout=DEADLINE_SECONDS)
        return response


async def test_megabyte_texts_are_analysed_in_linear_time(text_plugins):
    cognitive, writing = text_plugins["cognitive"].address, text_plugins["writing"].address
    all_rules = [{"rule": r} for r in ("filler", "repeated_word", "long_sentence", "no_conclusion")]
    for shape, text in MEGABYTE_TEXTS.items():
        for address, protocol, extra in (
            (cognitive, "entities", {}),
            (cognitive, "summarize", {}),
            (cognitive, "emotion", {}),
            (writing, "critique", {}),
            (writing, "revise", {"issues": all_rules}),
        ):
            answer = await execute(address, protocol, {"text": text, **extra})
            assert answer.output.fields, (shape, protocol)
    joints = await execute(writing, "revise", {"text": "We came, and " * 20_000 + "left.", "issues": all_rules})
    assert joints.output.fields["text"].string_value.startswith("We came.")
    backwards = [{"if": [f"x{i + 1}"], "then": f"x{i}"} for i in range(60_000)]  # one derivation a pass
    derived = await execute(cognitive, "reason", {"facts": ["x60000"], "rules": backwards})
    assert len(derived.output.fields["derived"].list_value.values) == 1000  # where it stops
    summary = await execute(cognitive, "summarize", {"text": SUMMARY_OF_300, "sentences": 3})
    assert len(summary.output.fields["sentences"].list_value.values) == 3


async def test_a_validation_pattern_cannot_hold_the_plugin(text_plugins):
    writing = text_plugins["writing"].address
    evil = {"value": {"name": "a" * 100 + "!"}, "rules": [{"field": "name", "pattern": "^(a+)+$"}]}
    answer = await execute(writing, "validate", evil)
    assert answer.output.fields["valid"].bool_value is False
    lookahead = {"value": {"name": "x"}, "rules": [{"field": "name", "pattern": "(?=x)x"}]}
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await execute(writing, "validate", lookahead)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "rules[name].pattern" in str(refused.value.details()) and "linear time" in str(refused.value.details())
    still = await execute(writing, "validate", {"value": {"name": "ok"}, "rules": [{"field": "name", "pattern": "o."}]})
    assert still.output.fields["valid"].bool_value is True


INPUT_KEYS = ["text", "schema", "rules", "facts", "value", "issues", "input", "children", "states", "output"]
INPUT_KEYS += ["sentences", "goal", "topic", "points", "round", "routes", "default", "threshold"]
UNCLEAR = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DEADLINE_EXCEEDED}


@pytest.mark.parametrize("seed", [1, 2])
async def test_random_calls_to_the_bundled_plugins_are_answered_clearly(text_plugins, seed):
    """Calls made from the contract's descriptors (odd contexts, deadlines out of range) with
    inputs of the keys the protocols read, holding values of every JSON shape: each answer is a
    result or a clear refusal (a deadline with nanos out of range answered UNKNOWN; a supervisor
    given children that were not an object, UNKNOWN), never UNKNOWN, INTERNAL or a hang."""
    make, rng = RandomRequests(seed), random.Random(seed)
    seen: dict[str, set[str]] = {}
    for plugin in text_plugins.values():
        async with grpc.aio.insecure_channel(plugin.address) as channel:
            stub = protocol_pb2_grpc.ProtocolServiceStub(channel)
            names = [p.name for p in (await stub.Describe(protocol_pb2.DescribeRequest(), timeout=10)).protocols]
            for _ in range(100):
                request = make.fill(protocol_pb2.ExecuteRequest())
                request.protocol = rng.choice([*names, "nope"])
                request.input.Clear()
                request.input.update({rng.choice(INPUT_KEYS): make.json_value() for _ in range(rng.randint(0, 5))})
                try:
                    if rng.random() < 0.5:
                        await stub.Execute(request, timeout=DEADLINE_SECONDS)
                    else:
                        async for _ in stub.ExecuteStream(request, timeout=DEADLINE_SECONDS):
                            pass
                    code = grpc.StatusCode.OK
                except grpc.aio.AioRpcError as exc:
                    code = exc.code()
                    assert code not in UNCLEAR, (request.protocol, code, exc.details(), str(request.input)[:500])
                seen.setdefault(request.protocol, set()).add(code.name)
            await stub.Describe(protocol_pb2.DescribeRequest(), timeout=10)
    assert sum("OK" in codes for codes in seen.values()) >= 5  # not all refused at the door
