"""`python -m bench --only calls`: what the orchestrator spends on one call to a plugin written from
the contract alone (bench/unary_plugin.py, unary Execute), against what the thin orchestrator
spends on its calls (a bare stub.Execute with a small context), in one process, same run.

The orchestrator's caller (protocols/caller.py) runs in this process, built as the server builds
it; the plugin is its own process. Each round makes `total` calls, 64 in flight, with the bare
stub and with the caller in turn; CPU is this process's (time.process_time), so the figure is
the calling side only. Rounds interleave (the order rotating), so the drift of the machine falls
on both alike, and the ratio is the median of the rounds' ratios.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from bench.harness import Stat, start_plugin, throughput
from bench.report import table
from mcp_sdk.proto import protocol_pb2, protocol_pb2_grpc
from mcp_server.engine.payload import Payload
from mcp_server.engine.ports import CallContext
from mcp_server.engine.values import dict_to_struct
from mcp_server.orchestrator import Orchestrator
from mcp_server.protocols.caller import execution_context
from mcp_server.settings import Settings
from mcp_server.state import open_store

IN_FLIGHT = 64
ATTEMPT_SECONDS = 30.0


async def bench_calls(_sdk_plugin: Any, quick: bool) -> None:
    rounds, total = (20, 1000) if quick else (60, 1000)
    plugin = start_plugin("bench.unary_plugin")
    store = await open_store("sqlite://:memory:")
    orchestrator = Orchestrator(Settings(plugins=(plugin.address,)), store)
    channel = grpc.aio.insecure_channel(plugin.address)
    try:
        await orchestrator.directory.register(plugin.address)
        stub = protocol_pb2_grpc.ProtocolServiceStub(channel)
        value = Payload.of_struct(dict_to_struct({"text": "hello"}))
        context = CallContext("t" * 32, "root/s0", 1, "k" * 64, "three", 1)

        async def bare() -> None:
            request = protocol_pb2.ExecuteRequest(
                protocol="echo",
                input=value.struct(),
                context=protocol_pb2.ExecutionContext(task_id=context.task_id, step_path=context.step_path),
            )
            await stub.Execute(request)

        async def bare_with_deadline() -> None:
            request = protocol_pb2.ExecuteRequest(
                protocol="echo", input=value.struct(), context=execution_context(context, ATTEMPT_SECONDS)
            )
            await stub.Execute(request, timeout=ATTEMPT_SECONDS)

        async def caller() -> None:
            await orchestrator.caller.call("echo", value, context, timeout=ATTEMPT_SECONDS)

        paths: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("bare stub.Execute (the thin orchestrator's call)", bare),
            ("the orchestrator's caller (GrpcProtocolCaller.call)", caller),
            ("bare stub.Execute, the caller's request and gRPC deadline", bare_with_deadline),
        ]
        cpu = {name: Stat() for name, _ in paths}
        rate = {name: Stat() for name, _ in paths}
        for _name, run in paths:  # warm up: channels, the first Execute after ExecuteMany is refused
            await _round(run, 200)
        for turn in range(rounds):
            for name, run in paths[turn % len(paths) :] + paths[: turn % len(paths)]:
                seconds, wall = await _round(run, total)
                cpu[name].runs.append(seconds * 1e6 / total)
                rate[name].runs.append(total / wall)
    finally:
        await channel.close()
        await orchestrator.caller.channels.close()
        await store.close()
        plugin.stop()
    bare_cpu = cpu[paths[0][0]].runs
    rows: list[tuple[str, Stat | float | str, str]] = []
    for index, (name, _) in enumerate(paths):
        runs = cpu[name].runs
        ratio = statistics.median(c / b for b, c in zip(bare_cpu, runs))
        added = statistics.median(c - b for b, c in zip(bare_cpu, runs))
        note = f"{ratio:.2f}x the bare call (paired), {added:+.1f} us" if index else ""
        rows.append((f"{name}: CPU us per call, calling side", cpu[name], note))
        rows.append((f"{name}: calls/s, {IN_FLIGHT} in flight", rate[name], ""))
    table("One call to a contract-only unary plugin: what the calling side spends", rows)


async def _round(run: Callable[[], Awaitable[None]], total: int) -> tuple[float, float]:
    """CPU seconds of this process and wall seconds for `total` calls, IN_FLIGHT at a time."""
    started_cpu = time.process_time()
    rate = await throughput(run, IN_FLIGHT, total)
    return time.process_time() - started_cpu, total / rate
