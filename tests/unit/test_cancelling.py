"""cancel_and_wait: the task ends, however it ends; the waiter's own cancellation is kept.
cancel_until_stopped: a loop that swallowed its cancellation is cancelled again."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from mcp_server.engine.cancelling import cancel_and_wait, cancel_until_stopped, raise_if_cancelled

pytestmark = pytest.mark.asyncio


async def slow_to_stop(stopped: list[str]) -> None:
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        await asyncio.sleep(0.2)  # cleanup that takes a while
        stopped.append("cleaned up")
        raise


async def test_the_task_is_cancelled_and_waited_for():
    stopped: list[str] = []
    task = asyncio.create_task(slow_to_stop(stopped))
    await asyncio.sleep(0)
    await cancel_and_wait(task)
    assert task.cancelled() and stopped == ["cleaned up"]


async def test_a_task_that_fails_while_stopping_does_not_raise_into_the_waiter():
    async def fails() -> None:
        try:
            await asyncio.sleep(60)
        finally:
            raise RuntimeError("broke while stopping")

    task = asyncio.create_task(fails())
    await asyncio.sleep(0)
    await cancel_and_wait(task)
    assert isinstance(task.exception(), RuntimeError)


async def test_the_waiter_cancelled_while_it_waits_is_cancelled_and_the_task_still_ends():
    stopped: list[str] = []
    task = asyncio.create_task(slow_to_stop(stopped))
    await asyncio.sleep(0)
    waiter = asyncio.create_task(cancel_and_wait(task))
    await asyncio.sleep(0.05)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await asyncio.sleep(0.3)
    assert task.cancelled() and stopped == ["cleaned up"]


async def test_a_swallowed_cancellation_is_raised_at_the_next_check():
    """What redis-py does on Python 3.11 when a reply arrives in the turn the cancel does."""

    async def library_call() -> str:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            return "a reply"  # the cancellation is lost here
        return "never"

    async def caller() -> str:
        reply = await library_call()
        raise_if_cancelled()
        return reply

    task = asyncio.create_task(caller())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_no_cancellation_no_raise_and_a_handled_one_is_forgotten():
    raise_if_cancelled()  # nothing asked

    async def handles() -> str:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            asyncio.current_task().uncancel()  # handled, as asyncio asks
        raise_if_cancelled()
        return "went on"

    task = asyncio.create_task(handles())
    await asyncio.sleep(0)
    task.cancel()
    assert await task == "went on"


async def swallows_once(turns: list[str]) -> None:
    """A background loop whose store call swallowed its cancellation (as redis-py's can): it
    sleeps on to its next round."""
    swallowed = False
    while True:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            if swallowed:
                raise
            swallowed = True
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            turns.append("swallowed")


async def test_a_loop_that_swallowed_its_cancellation_is_cancelled_again_and_one_that_never_stops_is_returned():
    turns: list[str] = []
    loop = asyncio.create_task(swallows_once(turns))
    await asyncio.sleep(0)
    assert await cancel_until_stopped([loop], within=5) == set()
    assert loop.cancelled() and turns == ["swallowed"]

    released = asyncio.Event()

    async def stops_only_when_released() -> None:
        while not released.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(60)

    stubborn = asyncio.create_task(stops_only_when_released())
    await asyncio.sleep(0)
    assert await cancel_until_stopped([stubborn], within=1.2) == {stubborn}
    released.set()
    assert await cancel_until_stopped([stubborn], within=5) == set()
