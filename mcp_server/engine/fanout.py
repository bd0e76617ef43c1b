"""Run a set of branches concurrently under a join rule; shared by parallel and map nodes.

The join is met once `required` branches have completed; the branches still running are
then cancelled (their plugin calls with them) and awaited, so nothing is left running.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from mcp_server.engine.cancelling import cancel_all
from mcp_server.engine.cleanup_replay import replaying
from mcp_server.engine.context import NodeFailed, NodeResult

Branch = Callable[[], Awaitable[NodeResult]]
# Branches are started this many at a time, one loop turn apart: a branch's plugin call goes out
# (gRPC's task for it runs) only after every branch started in the same turn has done its work
# before its call, so 100 branches started at once sent their first call ~9 ms in, after all 100
# had done that work; in waves the calls of one wave go out while the next does it (a fan-out of
# 100 x 100 ms calls ends 3-5 ms sooner: docs/performance.md). A run whose every leaf in progress
# waits parks (suspensions.py), but not between waves: the next wave's branches are ready to run
# before any timer that comes due meanwhile, so they are leaves in progress before it is checked.
START_WAVE = 16


async def join_branches(
    owner: str, branches: Sequence[Branch], *, required: int, fail_fast: bool, max_concurrency: int
) -> dict[int, NodeResult]:
    """Run `branches`; return the results of the completed ones by index once `required`
    have completed. Raise NodeFailed when the join can no longer be met."""
    if required <= 0:
        return {}
    fail_fast = fail_fast and replaying() is None  # a clean-up walks every branch to its end
    width = max(1, max_concurrency)
    tasks: dict[asyncio.Future[NodeResult], int] = {}
    pending: set[asyncio.Future[NodeResult]] = set()
    # Each branch reports its own end (asyncio.wait would re-arm a callback on every pending
    # branch for each one that ends: quadratic in the number of branches).
    ended: asyncio.Queue[asyncio.Future[NodeResult]] = asyncio.Queue()
    results: dict[int, NodeResult] = {}
    failures: dict[int, NodeFailed] = {}
    # A branch starts only when a slot is free (in index order), so a map of 10,000 items four at
    # a time holds four tasks, not 10,000 waiting on a semaphore (whose cancel was quadratic).
    upcoming = iter(enumerate(branches))
    unstarted = len(branches)

    def start_next() -> None:
        nonlocal unstarted
        following = next(upcoming, None)
        if following is None:
            return
        index, branch = following
        unstarted -= 1
        task = asyncio.ensure_future(branch())
        tasks[task] = index
        pending.add(task)
        task.add_done_callback(ended.put_nowait)

    try:
        for started in range(min(width, len(branches))):
            if started and started % START_WAVE == 0:
                await asyncio.sleep(0)  # the last wave's calls go out first
            start_next()
        while pending:
            future = await ended.get()
            pending.discard(future)
            error = future.exception()
            if isinstance(error, NodeFailed):
                failures[tasks[future]] = error
            elif error is not None:
                raise error
            else:
                results[tasks[future]] = future.result()
            if len(results) >= required:
                return results
            if len(results) + len(pending) + unstarted < required and (fail_fast or not (pending or unstarted)):
                break
            start_next()  # the slot it held goes to the next branch
    finally:
        await cancel_all(pending)
    first = failures[min(failures)]
    raise NodeFailed(
        first.code,
        f"{owner}: {len(failures)} of {len(branches)} branches failed,"
        f" {required} needed to complete; first: {first.message}",
    )
