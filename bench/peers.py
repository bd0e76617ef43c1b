"""The peers, as bench/contract.py measures them beside this server: Dramatiq (2 processes x 8
threads) and Celery (prefork, 2 processes), each with Redis as broker and result backend, running
the same 3-step chain of no-op steps and read the way their users read a result (a pipeline's
`get_result(block=True)`, a chain's `.get()`). Their clients are synchronous: 64 threads keep 64
chains in flight. Skipped, with a line saying so, where they are not installed (`pip install
'.[bench]'`)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench.chains import System
from bench.report import REDIS

WORKERS = {
    "Dramatiq (2 processes x 8 threads)": [
        "-m",
        "dramatiq",
        "bench.peer_dramatiq",
        "--processes",
        "2",
        "--threads",
        "8",
    ],
    "Celery (prefork, 2 processes)": [
        "-m",
        "celery",
        "-A",
        "bench.peer_celery",
        "worker",
        "--pool",
        "prefork",
        "--concurrency",
        "2",
        "--loglevel",
        "WARNING",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ],
}


def _dramatiq_chain() -> Callable[[], Any]:
    import dramatiq

    from bench import peer_dramatiq

    def run() -> Any:
        pipe = dramatiq.pipeline(
            [peer_dramatiq.echo.message({"x": 1}), peer_dramatiq.echo.message(), peer_dramatiq.echo.message()]
        )
        pipe.run()
        return pipe.get_result(block=True, timeout=60_000)

    return run


def _celery_chain() -> Callable[[], Any]:
    from celery import chain

    from bench import peer_celery

    def run() -> Any:
        return (
            chain(peer_celery.echo.s({"x": 1}), peer_celery.echo.s(), peer_celery.echo.s())
            .apply_async()
            .get(timeout=60)
        )

    return run


CHAINS = {"Dramatiq (2 processes x 8 threads)": _dramatiq_chain, "Celery (prefork, 2 processes)": _celery_chain}


async def peer_systems(here: dict[str, int]) -> tuple[list[System], list[Callable[[], Awaitable[None]]]]:
    """A System per peer that runs here, and what closes them."""
    systems: list[System] = []
    closers: list[Callable[[], Awaitable[None]]] = []
    pool = ThreadPoolExecutor(64)
    loop = asyncio.get_running_loop()
    closers.append(lambda: asyncio.to_thread(pool.shutdown))
    for name, arguments in WORKERS.items():
        try:
            sync_chain = CHAINS[name]()
        except ImportError:
            print(f"({name}: not installed, not measured; pip install '.[bench]')")
            continue
        worker = subprocess.Popen(  # noqa: ASYNC220 (started once, before anything is measured)
            [sys.executable, *arguments],
            env={**os.environ, "BENCH_PEER_REDIS": REDIS},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        closers.append(lambda worker=worker: asyncio.to_thread(_stop, worker))  # type: ignore[misc]

        async def run_one(sync_chain: Callable[[], Any] = sync_chain) -> Any:
            return await loop.run_in_executor(pool, sync_chain)

        async with asyncio.timeout(60):
            await run_one()  # the workers are up
        await asyncio.sleep(1)
        processes = {"client": here["client"], "redis": here["redis"], "workers": worker.pid}
        processes |= {f"worker {i}": pid for i, pid in enumerate(_descendants(worker.pid))}
        systems.append(System(name, run_one, processes))
    return systems, closers


def _descendants(pid: int) -> list[int]:
    found = []
    with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{pid}/children") as listed:
        for child in map(int, listed.read().split()):
            found += [child, *_descendants(child)]
    return found


def _stop(worker: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(worker.pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while worker.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    if worker.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGKILL)
