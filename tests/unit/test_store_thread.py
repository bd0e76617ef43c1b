"""The embedded store's thread: work runs in the order it was submitted, each caller gets its
own result or error however many are queued together, and stopping finishes what is queued."""

from __future__ import annotations

import asyncio
import threading

import pytest

from mcp_server.errors import Unavailable
from mcp_server.state.sqlite.database import SqliteDatabase
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


async def test_work_after_the_stop_fails_at_once_and_a_second_stop_returns():
    """Both waited for a thread that had ended: a second stop of a stopped server took 5 s (its
    time limit), and a call after the stop would have waited forever."""
    worker = StoreThread("test-store")
    assert await worker.run(lambda: 1) == 1
    await worker.stop()
    async with asyncio.timeout(2):
        await worker.stop()
        with pytest.raises(Unavailable, match="the store is closed"):
            await worker.run(lambda: 2)


async def test_a_sqlite_store_closed_twice_closes_once(tmp_path):
    database = await SqliteDatabase.open(str(tmp_path / "twice.db"))
    await database.close()
    async with asyncio.timeout(2):
        await database.close()
    again = await SqliteDatabase.open(str(tmp_path / "twice.db"))  # the file was let go
    await again.close()
