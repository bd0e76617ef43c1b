"""`python -m bench.instructions [--read run|submit-watch|watch] [--chains N] [--baseline REF]`:
count the machine instructions the orchestrator executes per 3-step chain, under valgrind's
callgrind, on a contract-only unary plugin and Redis.

Seconds of CPU drift 15-20% over an hour on this shared 2-core machine, and two interleaved runs
of the same server differ by 5-10% per round, so a change worth 2-3% of a chain's CPU cannot be
seen in `--only contract`. An instruction count is the same for the same code and inputs however
busy the machine is (two runs of one server agree within about 1%). It counts the process's own
work in user space: not the kernel's (system calls), not the client's, the plugin's or Redis's.

The server runs ~50x slower under valgrind, so its timers and pollers (lease renewal, the due and
schedule pollers, the partitions' XREAD) take a far larger share of the count than they do
natively. Each server is therefore measured twice in one process: idle for `--idle-seconds`,
then under load; the load's count minus the idle rate times the load's duration is the chains'
own work. Reported: that figure per chain (millions of instructions), and the raw one.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from bench.baseline import prepare
from bench.harness import Orchestrated, Proc, chain, start_orchestrator, start_plugin
from bench.report import REDIS, table


@dataclass
class Count:
    """One measured server: instructions per chain, idle-corrected and raw, and its idle rate."""

    per_chain: float
    raw_per_chain: float
    idle_per_second: float
    load_seconds: float


def dumped(out: Path, name: str) -> int:
    """The instruction total of the dump named `name` (callgrind_control -d NAME zeroes after)."""
    for path in out.glob("cg.*"):
        text = path.read_text(errors="replace")
        head = text[:2000]
        if f"Trigger: dump {name}" in head:
            found = re.search(r"^summary: (\d+)", text, re.MULTILINE)
            assert found, path
            return int(found.group(1))
    raise AssertionError(f"no callgrind dump named {name} in {out}")


async def control(*args: str) -> None:
    process = await asyncio.create_subprocess_exec(
        "callgrind_control", *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    await process.wait()


async def drive(client: Orchestrated, chains: int, read: str, in_flight: int) -> None:
    gate = asyncio.Semaphore(in_flight)

    async def one() -> None:
        async with gate:
            await client.run("three", read=read)

    await asyncio.gather(*(one() for _ in range(chains)))


async def measure(plugin: Proc, code: Path | None, read: str, chains: int, in_flight: int, idle: float) -> Count:
    out = Path(tempfile.mkdtemp(prefix="callgrind-"))
    valgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/cg.%p", "--dump-instr=no"]
    store = f"{REDIS}?prefix=bench:ir{uuid.uuid4().hex[:6]}:"
    server = start_orchestrator(store, [plugin.address], "callgrind", code, valgrind)
    process = server.process
    client = Orchestrated(server.address)
    try:
        await client.create(chain("three", 3))
        await drive(client, 60, read, in_flight)  # warm: imports, caches, plans, connections
        await asyncio.sleep(1)
        pid = str(process.pid)
        await control("-z", pid)
        started = time.monotonic()
        await asyncio.sleep(idle)
        idle_seconds = time.monotonic() - started
        await control("-d", "idle", pid)
        started = time.monotonic()
        await drive(client, chains, read, in_flight)
        load_seconds = time.monotonic() - started
        await control("-d", "load", pid)
        idle_rate = dumped(out, "idle") / idle_seconds
        load = dumped(out, "load")
        return Count((load - idle_rate * load_seconds) / chains, load / chains, idle_rate, load_seconds)
    finally:
        await client.close()
        server.stop()
        shutil.rmtree(out, ignore_errors=True)


async def main() -> None:
    parser = argparse.ArgumentParser(prog="bench.instructions")
    parser.add_argument("--read", action="append", choices=["run", "submit-watch", "watch", "events"])
    parser.add_argument("--chains", type=int, default=200)
    parser.add_argument("--in-flight", type=int, default=8)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--baseline", help="also count this commit's server (e.g. HEAD~5)")
    args = parser.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        sys.exit("bench.instructions needs valgrind (callgrind_control comes with it)")
    systems: list[tuple[str, Path | None]] = [("this server", None)]
    if args.baseline:
        systems.append((f"baseline {args.baseline}", prepare(args.baseline)))
    plugin = start_plugin("bench.unary_plugin")
    try:
        for read in args.read or ["run", "submit-watch"]:
            counts = {}
            for name, code in systems:
                counts[name] = await measure(plugin, code, read, args.chains, args.in_flight, args.idle_seconds)
            reference = counts.get(f"baseline {args.baseline}")
            rows = []
            for name, count in counts.items():
                ratio = f"{count.per_chain / reference.per_chain:.3f}x the baseline; " if reference else ""
                note = (
                    f"{ratio}raw {count.raw_per_chain / 1e6:.2f} M, idle {count.idle_per_second / 1e6:.1f} M/s"
                    f" over {count.load_seconds:.0f} s of load"
                )
                rows.append((f"{name}: M instructions per chain", f"{count.per_chain / 1e6:.3f}", note))
            table(
                f"Orchestrator instructions per 3-step chain ({read}, {args.chains} chains,"
                f" {args.in_flight} in flight, unary plugin, Redis; idle-corrected)",
                rows,
            )
    finally:
        plugin.stop()


if __name__ == "__main__":
    asyncio.run(main())
