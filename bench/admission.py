"""What admission costs a call when capacity is free: the same 3-step chain of `gpu_echo`
(one GPU per call) on a plugin that declares no capacity (no admission) and on one that
offers 1,000 GPUs (every call goes through the shared ledger), side by side, rounds
interleaved, Redis store."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

from bench.chains import System, redis_pid
from bench.harness import Orchestrated, Proc, chain, start_orchestrator
from bench.report import REDIS, table
from mcp_server.plugin_host import READY_LINE


def start_testkit(*extra: str) -> Proc:
    process = subprocess.Popen([sys.executable, "-m", "protocol_plugins.run", "protocol_plugins.testkit", *extra],
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.startswith(READY_LINE), line
    return Proc(process, line.split()[1])


async def bench_admission(plugin: Proc, quick: bool) -> None:
    samples, rounds, total = (40, 3, 192) if quick else (150, 5, 640)
    plain, limited = start_testkit(), start_testkit("--capacity", "gpus=1000")
    servers = [start_orchestrator(f"{REDIS}?prefix=bench:{uuid.uuid4().hex[:8]}:", [p.address]) for p in (plain, limited)]
    clients = [Orchestrated(s.address) for s in servers]
    try:
        systems = []
        for name, client, server, box in zip(("capacity unset (no admission)", "capacity set and free (admitted)"),
                                             clients, servers, (plain, limited)):
            await client.create(chain("three", 3, "gpu_echo"))
            await client.run("three")
            processes = {"client": os.getpid(), "orchestrator": server.process.pid, "plugin": box.process.pid,
                         "redis": redis_pid(REDIS)}
            systems.append(System(name, _runner(client), processes))
        for _ in range(rounds):
            for system in systems:
                await system.round(samples, total)
    finally:
        for client in clients:
            await client.close()
        for proc in (*servers, plain, limited):
            proc.stop()
    unset, admitted = systems
    per_call_ms = (admitted.p50.median - unset.p50.median) / 3
    per_call_cpu = (admitted.cpu.median - unset.cpu.median) / 3
    table("Admission with capacity free: 3-step chain of gpu_echo (same run, rounds interleaved)",
          unset.rows(None) + admitted.rows(None) + [
              ("admission per call: p50 ms added", f"{per_call_ms:.3f}", "target < 0.2 ms"),
              ("admission per call: CPU ms added, all processes", f"{per_call_cpu:.3f}", "")])


def _runner(client: Orchestrated):  # type: ignore[no-untyped-def]
    return lambda: client.run("three")
