"""Stopping a task and waiting for it to end, without swallowing the waiter's own cancellation.

The usual `task.cancel()` then `with suppress(CancelledError): await task` also suppresses a
cancellation of the coroutine that waits: a loop doing that while it is itself being stopped
goes on for ever. Python 3.11's `asyncio.wait_for` has the same flaw (when what it waits for
completes in the same loop turn as it is cancelled, it returns instead of raising): a replica's
shutdown hung 20 s on its claim loop, woken by a finishing task as it was being stopped. So the
code waits with a timeout by `async with asyncio.timeout(...)`, never `wait_for`.

Libraries do use it: redis-py reads every reply through `wait_for`, and a cancellation that
arrives in the turn its reply does is lost (3,000 GETs cancelled at random points here: 1,712
returned normally). The task still counts the request (`Task.cancelling()`), so code that must
stop when cancelled (the dispatcher's loops, a task run between its nodes) calls
`raise_if_cancelled()` after such awaits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from typing import Any

RECANCEL_SECONDS = 0.5  # long enough for a cancelled task's own clean-up, short beside a stop


async def cancel_and_wait(task: asyncio.Future[Any]) -> None:
    """Cancel `task` and wait until it has ended, whatever it ends with; if the caller is
    cancelled meanwhile, that cancellation propagates."""
    task.cancel()
    if not task.done():
        await asyncio.wait([task])  # raises nothing of the task's; a cancellation of the caller propagates


async def cancel_all(futures: Collection[asyncio.Future[Any]]) -> None:
    """Cancel `futures` and wait until each has ended (and so recorded how it ended: a node
    cancelled records its cancel as it unwinds, which must come before its owner's end)."""
    for future in futures:
        future.cancel()
    if futures:
        await asyncio.gather(*futures, return_exceptions=True)


def raise_if_cancelled() -> None:
    """Raise CancelledError if this task was asked to stop and something it awaited swallowed
    the request (see above); a task that handles a cancellation and goes on must call
    `uncancel()`, as asyncio asks, or this raises again."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def cancel_until_stopped(tasks: Collection[asyncio.Task[Any]], within: float) -> set[asyncio.Task[Any]]:
    """Cancel `tasks` and wait until they have ended, cancelling again every RECANCEL_SECONDS
    those that go on (a library swallowed the request, see above, and the task then awaited
    something else, as a background loop's sleep); return those still running after `within`
    seconds. A caller's own cancellation propagates."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    pending = {task for task in tasks if not task.done()}
    while pending and (left := deadline - loop.time()) > 0:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=min(RECANCEL_SECONDS, left))
    return pending
