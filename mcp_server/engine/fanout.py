"""Run a set of branches concurrently under a join rule; shared by parallel and map nodes.

The join is met once `required` branches have completed; the branches still running are
then cancelled (their plugin calls with them) and awaited, so nothing is left running.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from mcp_server.engine.context import NodeFailed, NodeResult

Branch = Callable[[], Awaitable[NodeResult]]


async def join_branches(
    owner: str, branches: Sequence[Branch], *, required: int, fail_fast: bool, max_concurrency: int
) -> dict[int, NodeResult]:
    """Run `branches`; return the results of the completed ones by index once `required`
    have completed. Raise NodeFailed when the join can no longer be met."""
    if required <= 0:
        return {}
    semaphore = asyncio.Semaphore(max(1, max_concurrency))

    async def bounded(branch: Branch) -> NodeResult:
        async with semaphore:
            return await branch()

    tasks: dict[asyncio.Future[NodeResult], int] = {
        asyncio.ensure_future(bounded(b)): i for i, b in enumerate(branches)
    }
    pending: set[asyncio.Future[NodeResult]] = set(tasks)
    # Each branch reports its own end (asyncio.wait would re-arm a callback on every pending
    # branch for each one that ends: quadratic in the number of branches).
    ended: asyncio.Queue[asyncio.Future[NodeResult]] = asyncio.Queue()
    for task in tasks:
        task.add_done_callback(ended.put_nowait)
    results: dict[int, NodeResult] = {}
    failures: dict[int, NodeFailed] = {}
    try:
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
            if len(results) + len(pending) < required and (fail_fast or not pending):
                break
    finally:
        await _cancel_all(pending)
    first = failures[min(failures)]
    raise NodeFailed(
        first.code,
        f"{owner}: {len(failures)} of {len(branches)} branches failed,"
        f" {required} needed to complete; first: {first.message}",
    )


async def _cancel_all(pending: set[asyncio.Future[Any]]) -> None:
    for future in pending:
        future.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
