"""`python -m bench.profile [--store redis|sqlite] [--seconds N] [--read watch|events|submit-watch|run]
[--plugin sdk|unary]`:
sample the orchestrator with py-spy while clients run 3-step chains, 64 in flight, each read by
WatchTask, WatchTaskEvents, one SubmitAndWatchTask stream or one RunTask call, on the SDK's
plugin (ExecuteMany) or a contract-only one (unary Execute, bench/unary_plugin.py), and print where its
time goes (own time and total time per function). The profile-and-fix rounds in docs/performance.md start here."""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import redis.asyncio as aioredis

from bench.harness import Orchestrated, chain, start_orchestrator, start_plugin
from bench.report import REDIS


async def load(address: str, seconds: float, read: str, in_flight: int = 64) -> int:
    client = Orchestrated(address)
    await client.create(chain("three", 3))
    done = 0
    stop = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < stop:
            await client.run("three", read=read)
            done += 1

    await asyncio.gather(*(worker() for _ in range(in_flight)))
    await client.close()
    return done


def summarize(collapsed: Path, top: int) -> None:
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        n = int(count)
        samples += n
        own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n
    print(f"\n{samples} samples; own time (the function itself):")
    for frame, n in own.most_common(top):
        print(f"  {n / samples:6.1%}  {frame}")
    print("\ntotal time (the function and what it calls):")
    for frame, n in total.most_common(top):
        print(f"  {n / samples:6.1%}  {frame}")


async def main() -> None:
    parser = argparse.ArgumentParser(prog="bench.profile")
    parser.add_argument("--store", choices=["redis", "sqlite"], default="redis")
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument(
        "--read",
        choices=["watch", "events", "submit-watch", "run"],
        default="watch",
        help="how a chain's end is read: SubmitTask + WatchTask, SubmitTask + WatchTaskEvents,"
        " SubmitAndWatchTask, or RunTask",
    )
    parser.add_argument(
        "--plugin",
        choices=["sdk", "unary"],
        default="sdk",
        help="the SDK's plugin (ExecuteMany) or one written from the contract alone (unary Execute)",
    )
    args = parser.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    plugin = start_plugin("bench.unary_plugin") if args.plugin == "unary" else start_plugin()
    prefix = f"bench:prof{uuid.uuid4().hex[:6]}:"
    url = f"{REDIS}?prefix={prefix}" if args.store == "redis" else f"sqlite:///{tempfile.mkdtemp()}/p.db"
    orchestrator = start_orchestrator(url, [plugin.address])
    out = Path(tempfile.mkdtemp()) / "profile.txt"
    try:
        recorder = await asyncio.create_subprocess_exec(
            spy,
            "record",
            "--pid",
            str(orchestrator.process.pid),
            "--format",
            "raw",
            "--output",
            str(out),
            "--duration",
            str(int(args.seconds)),
            "--rate",
            "250",
            "--nonblocking",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        done = await load(orchestrator.address, args.seconds, args.read)
        await asyncio.wait_for(recorder.wait(), 60)
        print(f"{done} chains in {args.seconds:.0f} s: {done / args.seconds:.0f}/s")
        summarize(out, args.top)
    finally:
        orchestrator.stop()
        plugin.stop()
        if args.store == "redis":
            await forget(prefix)


async def forget(prefix: str) -> None:
    """Delete what the profiled run left in Redis."""
    store = aioredis.Redis.from_url(REDIS)
    keys = [key async for key in store.scan_iter(f"{prefix}*", count=1000)]
    for start in range(0, len(keys), 1000):
        await store.unlink(*keys[start : start + 1000])
    await store.aclose()


if __name__ == "__main__":
    asyncio.run(main())
