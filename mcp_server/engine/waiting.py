"""Wait and sleep nodes: a branch that pauses for a signal, an event or until a time.

A wait takes a signal meant for it (one the task already has, or the next that comes), and its
output is the signal's payload. A wait for an event waits for a signal only a publish of that
event sends (service/event_waits.py finds the waits by the key computed here). Its deadline is
fixed when it first waits and kept in its step record, so a resumed run waits for the same time;
when it passes, `on_timeout` gives the output or the step fails DEADLINE_EXCEEDED. A sleep is a
wait whose only way out is its time.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from mcp_sdk.proto import task_pb2
from mcp_server.engine.context import NodeFailed, NodeResult, RunContext
from mcp_server.engine.event_types import E
from mcp_server.engine.events import timestamp_of
from mcp_server.engine.executor import evaluate, runs
from mcp_server.engine.instants import LATEST_SECONDS, rfc3339_of
from mcp_server.engine.payload import Payload
from mcp_server.engine.plan import SleepPlan, WaitPlan
from mcp_server.engine.suspensions import Signal
from mcp_server.errors import McpError

log = logging.getLogger(__name__)

MAX_KEY_LENGTH = 256  # PublishEventRequest.key's


@runs("wait")
async def run_wait(node: WaitPlan, path: str, value: Payload, ctx: RunContext, scope: Mapping[str, Any]) -> NodeResult:
    prompt = None
    if node.prompt is not None:
        prompt = Payload.of_python(evaluate(node.prompt, ctx, value, scope, node.id, "prompt"))
        ctx.record_input(path, prompt)
    state = ctx.state(path)
    signal = ctx.suspensions.signal_for(path, node.signal)
    if signal is None:
        deadline = _deadline_of(state) or (time.time() + node.timeout if node.timeout else None)
        data: dict[str, Any] = {"prompt": prompt.python() if prompt else None}
        key = None
        lookback = None
        if node.event:
            key = (
                ""
                if node.key is None
                else event_key(evaluate(node.key, ctx, value, scope, node.id, "key"), f"wait {node.id}")
            )
            data.update(event=node.event, key=key)
            lookback = _lookback(node, path, key, ctx)
        signal = await _suspend(ctx, path, node.signal, deadline, data, key, lookback)
        if signal is None:
            state = ctx.state(path)
            state.wait.timed_out = True
            if node.on_timeout is None:
                what = f"event {node.event!r}" if node.event else f"signal {node.signal!r}"
                raise NodeFailed("DEADLINE_EXCEEDED", f"wait {node.id}: no {what} came in time")
            output = evaluate(node.on_timeout, ctx, value, scope, node.id, "on_timeout")
            return NodeResult(Payload.of_python(output))
    else:
        ctx.suspensions.ended(path, signal)
    state = ctx.state(path)
    state.wait.signal = node.signal
    state.wait.received_sequence = signal.sequence
    state.wait.request_id = signal.request_id
    return NodeResult(signal.payload)


@runs("sleep")
async def run_sleep(
    node: SleepPlan, path: str, value: Payload, ctx: RunContext, scope: Mapping[str, Any]
) -> NodeResult:
    deadline = _deadline_of(ctx.state(path))
    if deadline is None:
        if node.duration is not None:
            deadline = time.time() + node.duration
        else:
            assert node.until is not None  # the compiler requires one of them
            deadline = _instant(evaluate(node.until, ctx, value, scope, node.id, "until"), node.id)
    if deadline > time.time():
        await _suspend(ctx, path, "", deadline, {"until": rfc3339_of(deadline)})
    return NodeResult(value)


async def _suspend(
    ctx: RunContext,
    path: str,
    signal: str,
    deadline: float | None,
    data: dict[str, Any],
    key: str | None = None,
    lookback: Callable[[], Awaitable[None]] | None = None,
) -> Signal | None:
    """Wait at `path` for a signal named `signal` until `deadline` (Unix seconds; None: no
    deadline of its own); return the signal, or None when the deadline passed. `key`: a wait for
    an event, the key the event must carry; `lookback`: what gives it a kept event, called once
    the wait is written (and so found by a publish from then on), before the run may park."""
    state = ctx.state(path)
    if state.status != task_pb2.STEP_STATUS_WAITING:  # first time: later lives wait on silently
        state.status = task_pb2.STEP_STATUS_WAITING
        state.wait.signal = signal
        if key is not None:
            state.wait.event, state.wait.key = data["event"], key
        if deadline is not None:
            state.wait.deadline.CopyFrom(timestamp_of(int(deadline * 1e9)))
        ctx.emit(
            E.TASK_EVENT_TYPE_STEP_SUSPENDED,
            step_path=path,
            flush_soon=True,
            message=_waiting_for(signal, deadline, data),
            data={"signal": signal, "deadline": rfc3339_of(deadline) if deadline else "", **data},
        )
    waiter = ctx.suspensions.wait(path, signal, deadline, state.start_time.ToMilliseconds(), key)
    if lookback is not None:
        ctx.suspensions.leaf_started()  # not parked while it looks: what it finds is taken in here
        try:
            await ctx.checkpoint()  # a lease lost here ends the run, as anywhere
            try:
                await ctx.store_call(lookback)
            except McpError as exc:  # refused (a full signal log): it waits for what comes next
                log.warning("task %s: %s: no event looked back for: %s", ctx.task.task_id, path, exc.message)
        finally:
            ctx.suspensions.leaf_ended()
    taken: Signal | None = None
    loop = asyncio.get_running_loop()
    try:
        when = None if deadline is None else loop.time() + max(0.0, deadline - time.time())
        async with asyncio.timeout_at(when):
            taken = await waiter.future
    except TimeoutError:
        future = waiter.future
        if not future.done() or future.cancelled():
            return None
        taken = future.result()  # given to this wait as its deadline passed: it is taken, not dropped
    finally:
        ctx.suspensions.ended(path, taken)
        if not ctx.suspensions.parking:  # a parked run leaves the step waiting, for the next life
            ctx.state(path).status = task_pb2.STEP_STATUS_RUNNING
    return taken


def _lookback(node: WaitPlan, path: str, key: str, ctx: RunContext) -> Callable[[], Awaitable[None]] | None:
    """What gives the wait an event published up to `node.lookback` before it began, if it has one."""
    publisher = ctx.publisher
    if not node.lookback or publisher is None:
        return None
    since_ms = ctx.state(path).start_time.ToMilliseconds() - int(node.lookback * 1000)
    task = ctx.task
    return lambda: publisher.deliver_kept(task.task_id, task.owner, path, node.event, key, since_ms)


def _waiting_for(signal: str, deadline: float | None, data: dict[str, Any]) -> str:
    """What a STEP_SUSPENDED event says the step waits for."""
    if "event" in data:
        keyed = f" with key {data['key']!r}" if data["key"] else ""
        return f"waiting for event {data['event']!r}{keyed}"
    return f"waiting for signal {signal!r}" if signal else f"sleeping until {rfc3339_of(deadline or 0)}"


def event_key(value: Any, node: str) -> str:
    """An event's key as the CEL of `node` (a wait's, a publish's) gave it: a string, or an
    integer made one."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise NodeFailed("INVALID_ARGUMENT", f"{node}: `key` gave a {type(value).__name__}, not a string")
    key = str(value)
    if len(key) > MAX_KEY_LENGTH:
        raise NodeFailed("INVALID_ARGUMENT", f"{node}: `key` gave {len(key)} characters; at most {MAX_KEY_LENGTH}")
    return key


def _deadline_of(state: task_pb2.StepState) -> float | None:
    """The deadline an earlier life of the run gave this step, if any."""
    if state.HasField("wait") and state.wait.HasField("deadline"):
        return float(state.wait.deadline.ToNanoseconds() / 1e9)
    return None


def _instant(value: Any, node_id: str) -> float:
    """A time given by CEL (an RFC 3339 string or a timestamp) as Unix seconds."""
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            raise NodeFailed(
                "INVALID_ARGUMENT", f"sleep {node_id}: `until` gave {value!r}, not an RFC 3339 time"
            ) from None
    if not isinstance(value, dt.datetime):
        raise NodeFailed("INVALID_ARGUMENT", f"sleep {node_id}: `until` gave {type(value).__name__}, not a time")
    if value.tzinfo is None:
        raise NodeFailed("INVALID_ARGUMENT", f"sleep {node_id}: `until` gave a time without a zone offset")
    seconds = value.timestamp()
    if seconds > LATEST_SECONDS:  # 9999-12-31 with a negative offset: past what a Timestamp holds
        raise NodeFailed("INVALID_ARGUMENT", f"sleep {node_id}: `until` gave {value.isoformat()}, after the year 9999")
    return max(seconds, 0.0)  # a time before 1970 has passed as surely as the epoch has
