"""testkit: small, observable protocols for trying the engine out and for its tests.

The plugin counts what it sees (calls by idempotency key, calls in flight, cancellations),
and the `stats` protocol reports those counts, so a test can check on the plugin side what
the orchestrator really did.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from typing import Any

import grpc
from google.protobuf import struct_pb2

from mcp_sdk.plugin import Context, Plugin, ProtocolError, Reply, accept, goto, retry
from mcp_sdk.proto import protocol_pb2
from mcp_sdk.values import dict_to_struct

plugin = Plugin("testkit")
T = protocol_pb2


class _Stats:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.calls: collections.Counter[str] = collections.Counter()
        self.by_protocol: collections.Counter[str] = collections.Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self.cancelled = 0
        self.seen_feedback: list[str] = []
        self.ticks: collections.defaultdict[str, list[float]] = collections.defaultdict(list)
        self.keyed_in_flight: collections.Counter[str] = collections.Counter()
        self.keyed_max: collections.Counter[str] = collections.Counter()

    def record(self, protocol: str, ctx: Context) -> None:
        self.calls[ctx.idempotency_key] += 1
        self.by_protocol[protocol] += 1


stats = _Stats()


@plugin.protocol("echo", description="Returns its input unchanged")
async def echo(data: dict[str, Any], ctx: Context) -> dict[str, Any]:
    stats.record("echo", ctx)
    return data


@plugin.protocol(
    "scripted_model",
    description="A model for agent nodes: round n answers with the calls `script[n-1]` lists (the script is"
    " in the first message), then, past the script, with the text `done` and every tool answer it was given",
)
async def scripted_model(data: dict[str, Any], ctx: Context) -> dict[str, Any]:
    stats.record("scripted_model", ctx)
    messages = data.get("messages") or [{}]
    script = messages[0].get("script") or []
    rounds_done = sum(1 for m in messages if m.get("role") == "assistant")
    answers = [m.get("content") for m in messages if m.get("role") == "tool"]
    if rounds_done < len(script):
        return {"text": "", "tool_calls": script[rounds_done], "tools_seen": [t["name"] for t in data.get("tools", [])]}
    return {"text": "done", "answers": answers, "rounds": rounds_done + 1}


@plugin.protocol("gpu_echo", gpus=1, description="Returns its input; needs one GPU (for admission with --capacity)")
async def gpu_echo(data: dict[str, Any], ctx: Context) -> dict[str, Any]:
    stats.record("gpu_echo", ctx)
    return data


@plugin.protocol("append", description="Appends `suffix` (default: the step path) to `text`")
async def append(data: dict[str, Any], ctx: Context) -> dict[str, Any]:
    stats.record("append", ctx)
    suffix = str(data.get("suffix") or ctx.step_path.rsplit("/", 1)[-1])
    return {"text": str(data.get("text", "")) + suffix, "trail": [*data.get("trail", []), ctx.step_path]}


@plugin.protocol("sleep", description="Sleeps `ms` milliseconds; counts calls in flight and cancellations")
async def sleep(data: dict[str, Any], ctx: Context) -> dict[str, Any]:
    stats.record("sleep", ctx)
    stats.in_flight += 1
    stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
    try:
        milliseconds = float(data.get("ms", 100))
        steps = 4 if data.get("progress") else 1
        for i in range(steps):
            await asyncio.sleep(milliseconds / 1000 / steps)
            await ctx.progress((i + 1) / steps, f"slept {(i + 1) * milliseconds / steps:.0f} ms")
        return {**data, "slept_ms": milliseconds}
    except asyncio.CancelledError:
        stats.cancelled += 1
        raise
    finally:
        stats.in_flight -= 1


@plugin.protocol(
    "stall",
    description="Streams `before` progress messages `every_ms` apart, then, on attempts up to `stalls`"
    " (default 1), sends nothing for `stall_ms` before it answers (a model whose stream stops)",
)
async def stall(data: dict[str, Any], ctx: Context) -> dict[str, Any]:
    stats.record("stall", ctx)
    try:
        for i in range(int(data.get("before", 3))):
            await ctx.progress(0.0, f"token {i}")
            await asyncio.sleep(float(data.get("every_ms", 50)) / 1000)
        if ctx.attempt <= int(data.get("stalls", 1)):
            await asyncio.sleep(float(data.get("stall_ms", 30000)) / 1000)
        return {"attempt": ctx.attempt}
    except asyncio.CancelledError:
        stats.cancelled += 1
        raise


@plugin.protocol("spin", description="Computes for `ms` milliseconds in a plain (blocking) function")
def spin(data: dict[str, Any], ctx: Context) -> dict[str, Any]:
    until = time.monotonic() + float(data.get("ms", 100)) / 1000
    rounds = 0
    while time.monotonic() < until:
        rounds += 1
    return {"rounds": rounds}


blocked = {"in_flight": 0, "most": 0}
blocked_lock = threading.Lock()


@plugin.protocol("block", description="Waits `ms` in a plain function, as a handler calling an HTTP API does")
def block(data: dict[str, Any], ctx: Context) -> dict[str, Any]:
    if data.get("reset"):
        with blocked_lock:
            blocked["most"] = 0
        return {}
    with blocked_lock:
        blocked["in_flight"] += 1
        blocked["most"] = max(blocked["most"], blocked["in_flight"])
    try:
        time.sleep(float(data.get("ms", 100)) / 1000)
    finally:
        with blocked_lock:
            blocked["in_flight"] -= 1
    return {"most_at_once": blocked["most"]}


@plugin.protocol("chatter", description="Sends `n` progress messages of `size` bytes as fast as it can")
async def chatter(data: dict[str, Any], ctx: Context) -> dict[str, Any]:
    count, filler = int(data.get("n", 10)), "x" * int(data.get("size", 1))
    for i in range(count):
        await ctx.progress(i / count, f"message {i}", {"filler": filler})
    return {"sent": count}


@plugin.protocol("fail", description="Fails with gRPC code `code` (default UNAVAILABLE)")
async def fail_call(data: dict[str, Any], ctx: Context) -> dict[str, Any]:
    stats.record("fail", ctx)
    code = grpc.StatusCode[str(data.get("code", "UNAVAILABLE"))]
    raise ProtocolError(code, str(data.get("message", "asked to fail")))


@plugin.protocol("flaky", description="Fails with UNAVAILABLE for the first `failures` attempts of each step")
async def flaky(data: dict[str, Any], ctx: Context) -> dict[str, Any]:
    stats.record("flaky", ctx)
    if stats.calls[ctx.idempotency_key] <= int(data.get("failures", 1)):
        raise ProtocolError(grpc.StatusCode.UNAVAILABLE, f"flaky: attempt {ctx.attempt} fails on purpose")
    return {**data, "attempts_seen": stats.calls[ctx.idempotency_key]}


@plugin.protocol(
    "scored_draft",
    description="Writes a draft whose score rises once it has received feedback",
    type=T.PROTOCOL_TYPE_GENERATION,
)
async def draft(data: dict[str, Any], ctx: Context) -> dict[str, Any]:
    stats.record("scored_draft", ctx)
    feedback = str(data.get("feedback", ""))
    if feedback:
        stats.seen_feedback.append(feedback)
    return {
        "text": f"draft of {data.get('topic', 'something')}" + (f" (revised: {feedback})" if feedback else ""),
        "score": 0.9 if feedback else 0.4,
        "feedback_received": feedback,
    }


@plugin.protocol(
    "threshold_supervisor",
    description="Accepts when every child's `score` reaches `threshold` (input, default 0.8)",
    type=T.PROTOCOL_TYPE_SUPERVISOR,
)
async def threshold_supervisor(data: dict[str, Any], ctx: Context) -> Reply:
    stats.record("threshold_supervisor", ctx)
    threshold = float(data.get("input", {}).get("threshold", 0.8)) if isinstance(data.get("input"), dict) else 0.8
    children: dict[str, Any] = data.get("children", {})
    weak = sorted(
        cid for cid, out in children.items() if not isinstance(out, dict) or float(out.get("score", 0)) < threshold
    )
    if not weak:
        lowest = min((float(out.get("score", 0)) for out in children.values()), default=1.0)
        return accept({"score": lowest, "round": data.get("round"), "outputs": children})
    return retry(f"raise the score above {threshold}", children=weak)


@plugin.protocol(
    "silent_supervisor", description="A broken supervisor: answers without a decision", type=T.PROTOCOL_TYPE_SUPERVISOR
)
async def silent_supervisor(data: dict[str, Any], ctx: Context) -> dict[str, Any]:
    stats.record("silent_supervisor", ctx)
    return {"thoughts": "none"}


@plugin.protocol(
    "goto", description="Names the next state: `next` from the input or output", type=T.PROTOCOL_TYPE_ROUTER
)
async def route(data: dict[str, Any], ctx: Context) -> Reply:
    stats.record("goto", ctx)
    output: dict[str, Any] = data["output"] if isinstance(data.get("output"), dict) else data
    return goto(str(output.get("next", data.get("next", ""))), routed=True)


@plugin.protocol(
    "nest",
    description="Returns `levels` lists (objects with `objects: true`) nested in one another under `v` "
    "(for the value-depth limit)",
)
async def nest(data: dict[str, Any], ctx: Context) -> dict[str, Any]:
    stats.record("nest", ctx)
    value: Any = "bottom"
    for _ in range(int(data.get("levels", 1))):
        value = {"v": value} if data.get("objects") else [value]
    return {"v": value}


@plugin.protocol(
    "sized", description="Returns an output that is exactly `bytes` long as a serialized google.protobuf.Value"
)
async def sized(data: dict[str, Any], ctx: Context) -> dict[str, Any]:
    stats.record("sized", ctx)
    return exactly(int(data.get("bytes", 100)), str(data.get("tag", "")))


def exactly(size: int, tag: str) -> dict[str, Any]:
    """An object of `tag` plus padding whose serialized Value has exactly `size` bytes."""
    for pad in range(0, 24):
        for length in range(max(0, size - 48), size):
            candidate = {"tag": tag, "data": "x" * length, **({"p": "y" * pad} if pad else {})}
            if struct_pb2.Value(struct_value=dict_to_struct(candidate)).ByteSize() == size:
                return candidate
    raise ValueError(f"cannot make an output of exactly {size} bytes")


@plugin.protocol("stamp", description="Returns its input with `stamp` set to the step path (same size, new content)")
async def stamp(data: dict[str, Any], ctx: Context) -> dict[str, Any]:
    stats.record("stamp", ctx)
    return {**data, "stamp": ctx.step_path}


@plugin.protocol(
    "metered",
    description="Reports `usage` (an object of amounts) as what the call used (unless `report` is false);"
    " fails with UNAVAILABLE"
    " (using nothing) for the first `failures` attempts of each step",
)
async def metered(data: dict[str, Any], ctx: Context) -> dict[str, Any]:
    stats.record("metered", ctx)
    if ctx.attempt <= int(data.get("failures", 0)):
        raise ProtocolError(grpc.StatusCode.UNAVAILABLE, f"attempt {ctx.attempt} fails on purpose")
    if data.get("report", True):
        ctx.report_usage(**{name: float(amount) for name, amount in dict(data.get("usage", {})).items()})
    return {k: v for k, v in data.items() if k not in ("usage", "failures")}


@plugin.protocol("counter", description="Adds 1 to `n`")
async def counter(data: dict[str, Any], ctx: Context) -> dict[str, Any]:
    stats.record("counter", ctx)
    return {**data, "n": int(data.get("n", 0)) + 1}


@plugin.protocol("whoami", description="Returns the call's context and metadata as the plugin saw them")
async def whoami(data: dict[str, Any], ctx: Context) -> dict[str, Any]:
    return {"task_id": ctx.task_id, "step_path": ctx.step_path, "traceparent": ctx.metadata.get("traceparent", "")}


@plugin.protocol("tick", description="Notes when it was called, under `tag` (for rate limit tests)")
async def tick(data: dict[str, Any], ctx: Context) -> dict[str, Any]:
    stats.record("tick", ctx)
    stats.ticks[str(data.get("tag", ""))].append(time.time())
    return data


@plugin.protocol("keyed", description="Sleeps `ms`; counts calls in flight per `key`, and the most at once")
async def keyed(data: dict[str, Any], ctx: Context) -> dict[str, Any]:
    stats.record("keyed", ctx)
    key = str(data.get("key", ""))
    stats.keyed_in_flight[key] += 1
    stats.keyed_max[key] = max(stats.keyed_max[key], stats.keyed_in_flight[key])
    try:
        await asyncio.sleep(float(data.get("ms", 100)) / 1000)
    finally:
        stats.keyed_in_flight[key] -= 1
    return data


@plugin.protocol(
    "throttled",
    description="Answers RESOURCE_EXHAUSTED with a RetryInfo of `retry_after` s to the first attempt of each step",
)
async def throttled(data: dict[str, Any], ctx: Context) -> dict[str, Any]:
    stats.record("throttled", ctx)
    stats.ticks[str(data.get("tag", ""))].append(time.time())
    if stats.calls[ctx.idempotency_key] == 1:
        raise ProtocolError(
            grpc.StatusCode.RESOURCE_EXHAUSTED, "the provider says: slow down", retry_after=float(data["retry_after"])
        )
    return data


@plugin.protocol("stats", description="Reports what this plugin has seen since the last reset")
async def report(data: dict[str, Any], ctx: Context) -> dict[str, Any]:
    result = {
        "calls": dict(stats.calls),
        "by_protocol": dict(stats.by_protocol),
        "in_flight": stats.in_flight,
        "max_in_flight": stats.max_in_flight,
        "cancelled": stats.cancelled,
        "seen_feedback": list(stats.seen_feedback),
        "ticks": {tag: list(times) for tag, times in stats.ticks.items()},
        "keyed_max": dict(stats.keyed_max),
    }
    if data.get("reset"):
        stats.reset()
    return result


if __name__ == "__main__":
    plugin.main()
