"""A wait whose signal comes as its deadline passes (engine/waiting.py): the signal is taken,
never dropped after SignalTask said which step it went to."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from mcp_sdk.proto import task_pb2
from mcp_server.engine.payload import Payload
from mcp_server.engine.suspensions import Signal, Suspensions, Waiter
from mcp_server.engine.waiting import _suspend


class AnsweredAtOnce(Suspensions):
    """Gives every wait a signal in the same turn of the event loop as its deadline passes."""

    def __init__(self, signal: Signal) -> None:
        super().__init__(park_horizon=60.0)
        self.signal = signal

    def wait(self, path: str, signal: str, deadline: float | None, since_ms: int, key: str | None = None) -> Waiter:
        waiter = super().wait(path, signal, deadline, since_ms, key)
        # scheduled before the wait's timeout handler: the future has its result when the
        # timeout cancels the waiting task, which then sees the cancellation, not the result
        asyncio.get_running_loop().call_soon(waiter.future.set_result, self.signal)
        return waiter


class Context:
    """What _suspend uses of a RunContext: step states, events, suspensions."""

    def __init__(self, suspensions: Suspensions) -> None:
        self.suspensions = suspensions
        self.states: dict[str, task_pb2.StepState] = {}
        self.events: list[int] = []

    def state(self, path: str) -> task_pb2.StepState:
        return self.states.setdefault(path, task_pb2.StepState(path=path))

    def emit(self, type_: int, **fields: Any) -> None:
        self.events.append(type_)


@pytest.mark.asyncio
async def test_a_signal_given_as_the_deadline_passes_is_taken_not_dropped() -> None:
    signal = Signal(1, "go", Payload.of_python("yes"), "", "", sequence=6, assigned="root/a")
    ctx: Any = Context(AnsweredAtOnce(signal))
    taken = await _suspend(ctx, "root/a", "go", time.time() - 1, {})
    assert taken is signal and signal.consumed
    assert ctx.state("root/a").status == task_pb2.STEP_STATUS_RUNNING  # the wait goes on to complete
