"""StoreThread: one thread that runs an embedded store's work in order.

asyncio's run_in_executor wakes the event loop once per finished call. Under load the store's
calls arrive faster than the thread finishes them, so this thread takes every call waiting in
its queue, runs them one after another, and hands all their results back with one wake-up of
the loop; with a single call waiting it costs the same as an executor.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from mcp_server.errors import Unavailable

T = TypeVar("T")
_Job = tuple[Callable[[], Any], asyncio.Future[Any]]
_Outcome = tuple[asyncio.Future[Any], Any, BaseException | None]


class StoreThread:
    def __init__(self, name: str) -> None:
        self._loop = asyncio.get_running_loop()
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._stopping = False
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def run(self, work: Callable[[], T]) -> asyncio.Future[T]:
        """Run `work` on the thread, after everything submitted before it; once the thread is
        stopping, fail at once (UNAVAILABLE) rather than wait for a thread that has ended."""
        future: asyncio.Future[T] = self._loop.create_future()
        if self._stopping:
            future.set_exception(Unavailable("the store is closed"))
        else:
            self._jobs.put((work, future))
        return future

    async def stop(self) -> None:
        """Finish what is queued, then end the thread (again: at once)."""
        if not self._stopping:  # both are called on the loop's thread: no job slips in after the end
            self._stopping = True
            self._jobs.put(None)
        await asyncio.to_thread(self._thread.join)

    def _serve(self) -> None:
        stopping = False
        while not stopping:
            batch = [self._jobs.get()]
            while True:
                try:
                    batch.append(self._jobs.get_nowait())
                except queue.Empty:
                    break
            outcomes: list[_Outcome] = []
            for job in batch:
                if job is None:
                    stopping = True
                    continue
                work, future = job
                try:
                    outcomes.append((future, work(), None))
                except BaseException as exc:  # handed to the caller, as an executor would
                    outcomes.append((future, None, exc))
            if outcomes:
                try:
                    self._loop.call_soon_threadsafe(_deliver, outcomes)
                except RuntimeError:  # the loop is closed: nobody waits for these any more
                    return


def _deliver(outcomes: list[_Outcome]) -> None:
    for future, result, error in outcomes:
        if future.done():  # the caller gave up (cancelled)
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
