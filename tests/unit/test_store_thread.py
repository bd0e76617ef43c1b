"""The embedded store's thread: work runs in the order it was submitted, each caller gets its
own result or error however many are queued together, and stopping finishes what is queued."""

from __future__ import annotations

import asyncio
import threading

import pytest

from mcp_server.state.store_thread import StoreThread

pytestmark = pytest.mark.asyncio


async def test_work_runs_in_order_on_one_thread_and_each_caller_gets_its_own_result():
    worker = StoreThread("test-store")
    ran: list[int] = []
    threads: set[int] = set()

    def job(i: int) -> int:
        ran.append(i)
        threads.add(threading.get_ident())
        if i % 7 == 3:
            raise ValueError(f"job {i} fails")
        return i * i

    results = await asyncio.gather(*(worker.run(lambda i=i: job(i)) for i in range(300)), return_exceptions=True)
    await worker.stop()
    assert ran == list(range(300)) and len(threads) == 1 and threading.get_ident() not in threads
    for i, result in enumerate(results):
        if i % 7 == 3:
            assert isinstance(result, ValueError) and str(result) == f"job {i} fails"
        else:
            assert result == i * i


async def test_stopping_finishes_what_is_queued_and_a_cancelled_caller_does_not_break_the_rest():
    worker = StoreThread("test-store")
    gate = threading.Event()
    first = worker.run(gate.wait)
    abandoned = worker.run(lambda: "nobody reads this")
    last = worker.run(lambda: "done")
    abandoned.cancel()
    gate.set()
    await worker.stop()
    assert await first is True and await last == "done" and abandoned.cancelled()
