"""`python -m bench --only contract`: this server as a client and a plugin written from the protos
alone see it (issue 30), against the thin orchestrator and, where they run here, the peers.

The plugin is bench/unary_plugin.py: Describe and a unary Execute, as a Go or Node plugin would
serve (no ExecuteMany), the same kind of server as the thin orchestrator's step server;
`--contract-plugin node` runs bench/unary_plugin.js instead, the same plugin in Node.js (a third of
the Python one's CPU per call), so that less of the shared cores goes to the plugin. A chain is
3 no-op steps; 64 in flight for throughput (over 8 connections), one at a time for the p50; CPU is
counted in every process involved. Each path is how a client written from the protos reads a
task's end: SubmitAndWatchTask, SubmitTask + the per-event WatchTask, RunTask. `--processes 2`
runs the server as two processes on one address, beside the thin orchestrator run the same way.
Fan-out: 100 branches of a 100 ms call through each path against the same 100 calls gathered by a
client. Rounds interleave, so the drift of the machine falls on every system alike; each figure is
the median of the rounds. `--baseline REF` adds that commit's server (one process) on each path,
for before-and-after figures from one run.
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc

from bench.chains import System, fanout_floor, floor_systems, redis_pid, thin_chain
from bench.harness import Orchestrated, Proc, Stat, chain, start_orchestrator, start_plugin, start_thin
from bench.peers import peer_systems
from bench.report import REDIS, table
from mcp_sdk.proto import protocol_pb2_grpc

# connections from the client to the server: a server run with --processes N gets each from the
# kernel in one of its processes, as it would get many clients' connections
CONNECTIONS = 8
PATHS = (("SubmitAndWatchTask", "submit-watch"), ("SubmitTask + WatchTask", "watch"), ("RunTask", "run"))


PLUGINS = {"python": "bench.unary_plugin", "node": "bench/unary_plugin.js"}


async def bench_contract(
    _sdk_plugin: Proc, quick: bool, baseline: Path | None = None, plugin_in: str = "python"
) -> None:
    samples, rounds, total = (40, 3, 192) if quick else (150, 3, 640)
    plugin = start_plugin(PLUGINS[plugin_in])
    here = {"client": os.getpid(), "plugin": plugin.process.pid, "redis": redis_pid(REDIS)}
    started: list[Proc] = [plugin]
    closers: list[Callable[[], Awaitable[None]]] = []
    try:
        bare, systems = floor_systems(plugin, here, started, closers)
        systems.append(_thin_on_both_cores(plugin, here, started, closers))
        clients: dict[str, Orchestrated] = {}
        servers = [(1, None), (2, None)] + ([(1, baseline)] if baseline is not None else [])
        for processes, code in servers:
            orchestrator = start_orchestrator(
                f"{REDIS}?prefix=bench:{uuid.uuid4().hex[:8]}:",
                [plugin.address],
                code=code,
                MCP_PROCESSES=str(processes),
            )
            started.append(orchestrator)
            connections = [Orchestrated(orchestrator.address, own_connection=True) for _ in range(CONNECTIONS)]
            closers += [c.close for c in connections]
            await connections[0].create(chain("three", 3))
            await connections[0].create(_fan_out())
            for client in connections:  # every process has seen the workflow and the plugin
                await client.run("three", read="run")
            if code is None:
                clients[f"{processes}"] = connections[0]
            pids = orchestrator.pids()
            server = "the baseline" if code is not None else "this server"
            for label, read in PATHS if processes == 1 else PATHS[::2]:
                name = f"{server}{', 2 processes' if processes == 2 else ''}, {label}"
                systems.append(System(name, _runner(connections, read), here | pids))
        peers, peer_closers = await peer_systems(here)
        systems += peers
        closers += peer_closers
        for _ in range(rounds):
            for system in systems:
                await system.round(samples, total)
        fan_rows = await _fan_out_rows(bare, clients["1"], 3 if quick else 7)
    finally:
        for close in closers:
            await close()
        for proc in started:
            proc.stop()
    rows = systems[0].rows(None) + systems[1].rows(None)
    for system in systems[2:]:
        rows += system.rows(systems[1])
    table(
        f"3-step chain, a contract-only unary plugin in {plugin_in}, against the thin orchestrator and the peers", rows
    )
    table(f"Fan-out of 100 x 100 ms calls to the contract-only plugin in {plugin_in} (redis store)", fan_rows)


def _thin_on_both_cores(
    plugin: Proc, here: dict[str, int], started: list[Proc], closers: list[Callable[[], Awaitable[None]]]
) -> System:
    """The floor as two processes on one port, reached over the same 8 connections as this
    server's 2 processes: what any orchestrator of this shape can reach on these cores."""
    first = start_thin(plugin.address, REDIS)
    second = start_thin(plugin.address, REDIS, listen=first.address)
    started += [first, second]
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(first.address, options=options) for _ in range(CONNECTIONS)]
    closers += [c.close for c in channels]
    turns = itertools.cycle([protocol_pb2_grpc.ProtocolServiceStub(c) for c in channels])
    pids = {"process 0": first.process.pid, "process 1": second.process.pid}
    return System("thin orchestrator + Redis, 2 processes", lambda: thin_chain(next(turns), 3), here | pids)


def _runner(connections: list[Orchestrated], read: str) -> Callable[[], Awaitable[float]]:
    """Chains spread over the connections in turn, as many clients would spread them."""
    turns = itertools.cycle(connections)
    return lambda: next(turns).run("three", read=read)


def _fan_out() -> dict[str, object]:
    branches = [{"id": f"b{i}", "step": {"protocol": "sleep", "input": "{'ms': 100}"}} for i in range(100)]
    return {"workflow_id": "fan", "root": {"id": "fan", "parallel": {"children": branches, "max_concurrency": 100}}}


async def _fan_out_rows(
    bare: protocol_pb2_grpc.ProtocolServiceStub, client: Orchestrated, rounds: int
) -> list[tuple[str, Stat | float | str, str]]:
    gathered = Stat()
    by_path = {label: Stat() for label, _ in PATHS}
    for _label, read in PATHS:
        await client.run("fan", read=read)  # warm up
    for _ in range(rounds):
        gathered.runs.append(await fanout_floor(bare, 100, 100))
        for label, read in PATHS:
            by_path[label].runs.append(await client.run("fan", read=read) * 1000)
    rows: list[tuple[str, Stat | float | str, str]] = [("bare gRPC: 100 concurrent calls, wall ms", gathered, "")]
    for label, stat in by_path.items():
        rows.append(
            (
                f"parallel of 100 branches, {label}: wall ms",
                stat,
                f"{stat.median / gathered.median:.2f}x the bare gather",
            )
        )
    return rows
