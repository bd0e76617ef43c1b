"""One protocol call under the step's retry policy: its attempts, each taking rate-limit units
first, the backoffs between them (timers of the run: parked when long, kept across a crash), and
what each call used. A step's failed attempts and the protocol it is on are kept in its record,
so the policy spans the run's lives (the call cut off by a crash is not counted).
"""

from __future__ import annotations

import math
import random
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from mcp_sdk.proto import protocol_pb2
from mcp_server.engine.context import NodeResult, RunContext
from mcp_server.engine.event_types import E
from mcp_server.engine.events import timestamp_of
from mcp_server.engine.instants import rfc3339_of
from mcp_server.engine.payload import Payload, struct_to_python
from mcp_server.engine.plan import RetryPolicy
from mcp_server.engine.ports import CallContext, CallResult, ProtocolCallError
from mcp_server.engine.throttle import MAX_PAUSE_SECONDS, PROTOCOL_KEY, take_units
from mcp_server.engine.values import ValueTooDeep
from mcp_server.settings import Limits

# room in a plugin call's message for everything but the input (protocol name, context, framing)
REQUEST_OVERHEAD_BYTES = 16 * 1024


def backoff(policy: RetryPolicy, retry_number: int) -> float:
    """Seconds to wait before retry `retry_number` (1 for the first retry)."""
    base = min(policy.initial_backoff * policy.multiplier ** (retry_number - 1), policy.max_backoff)
    return max(0.0, base * (1 + policy.jitter * (2 * random.random() - 1)))


# what a plugin may report as a call's usage (ExecuteResponse.usage)
USAGE_NAME = re.compile(r"[^\x00-\x1f\x7f]{1,128}")
MAX_USAGE_NAMES = 64


@dataclass(frozen=True)
class Call:
    """One protocol call to make, with the policy around it."""

    protocol: str
    input: Payload
    retry: RetryPolicy
    attempt_timeout: float | None
    stream: bool = False
    # the rate-limit units each attempt takes first (empty: 1 unit of `protocol:<protocol>`)
    asks: tuple[tuple[str, float], ...] = ()
    idle_timeout: float | None = None  # with `stream`: the longest the call may send nothing


class StepObserver:
    """Turns what happens during a step's calls into the task's events."""

    def __init__(self, ctx: RunContext, path: str, deadline: float | None = None) -> None:
        self.ctx = ctx
        self.path = path
        self.deadline = deadline  # when the step's timeout runs out (Unix seconds), if it has one
        self.waiting_for = ""  # what the step waits for, while it waits for capacity or units
        self._progress_of = (0, 0, 0)  # attempt, PROGRESS events recorded for it, their bytes

    async def progress(self, progress: protocol_pb2.Progress) -> None:
        """A PROGRESS event, with the attempt it belongs to (a retry's STEP_RETRYING tells a watcher
        to drop what an earlier attempt streamed) and whatever data the plugin sent (tokens, say);
        past the limits of an attempt, one event saying that what follows is not recorded."""
        attempt = self.ctx.state(self.path).attempts
        recorded, size = self._progress_of[1:] if self._progress_of[0] == attempt else (0, 0)
        limits = self.ctx.limits
        if recorded > limits.max_progress_per_attempt:
            return
        size += progress.ByteSize()
        if recorded == limits.max_progress_per_attempt or size > limits.max_progress_bytes_per_attempt:
            self._progress_of = (attempt, limits.max_progress_per_attempt + 1, size)
            message = (
                f"progress past {limits.max_progress_per_attempt:,} messages or"
                f" {limits.max_progress_bytes_per_attempt:,} bytes in this attempt is not recorded"
            )
            extra: dict[str, Any] = {"progress_dropped": True}
        else:
            self._progress_of = (attempt, recorded + 1, size)
            message, extra = progress.message, struct_to_python(progress.data) if progress.HasField("data") else {}
        self.ctx.emit(
            E.TASK_EVENT_TYPE_PROGRESS,
            step_path=self.path,
            flush_soon=True,
            attempt=attempt,
            message=message,
            data={**extra, "fraction": progress.fraction},
        )

    def waiting(self, protocol: str, needs: str, why: str) -> None:
        self.waiting_for = f"{needs} on an instance of {protocol}"
        self.ctx.emit(
            E.TASK_EVENT_TYPE_STEP_WAITING,
            step_path=self.path,
            protocol=protocol,
            flush_soon=True,
            message=f"waiting for {self.waiting_for}: {why}",
            data={"needs": needs},
        )

    def granted(self, protocol: str, address: str) -> None:
        self.waiting_for = ""

    def breaker_changed(self, protocol: str, old: str, new: str) -> None:
        self.ctx.emit(
            E.TASK_EVENT_TYPE_BREAKER_STATE_CHANGED,
            step_path=self.path,
            protocol=protocol,
            flush_soon=True,
            message=f"circuit breaker of {protocol}: {old} -> {new}",
            data={"from": old, "to": new},
        )


def _retryable(policy: RetryPolicy, error: BaseException) -> bool:
    return (
        isinstance(error, ProtocolCallError)
        and not error.breaker_open
        and not error.final
        and error.code in policy.retryable_codes
    )


def _sendable(call: Call, limits: Limits) -> None:
    """Refuse, before sending, an input the plugin could not parse or the channel would not carry."""
    depth = call.input.depth(limits.max_value_depth)
    if depth > limits.max_value_depth:
        raise ProtocolCallError(
            "INVALID_ARGUMENT",
            str(ValueTooDeep(f"the input of {call.protocol}", depth, limits.max_value_depth)),
            final=True,
        )
    room = limits.max_message_bytes - REQUEST_OVERHEAD_BYTES
    if call.input.size > room:
        raise ProtocolCallError(
            "RESOURCE_EXHAUSTED",
            f"the input of {call.protocol} is {call.input.size} bytes; a plugin call carries "
            f"at most {room} (MCP_LIMIT_MAX_MESSAGE_BYTES, less {REQUEST_OVERHEAD_BYTES} for the call)",
            final=True,
        )


def _keepable(result: CallResult, protocol: str, limits: Limits) -> NodeResult:
    """The call's result, unless its output (or a supervisor's replacement output) is too deep."""
    outputs = [(result.output, f"the output of {protocol}")]
    if result.directive is not None and result.directive.decision.HasField("output"):
        outputs.append((Payload.of_struct(result.directive.decision.output), f"the decision output of {protocol}"))
    for output, what in outputs:
        depth = output.depth(limits.max_value_depth)
        if depth > limits.max_value_depth:
            raise ProtocolCallError("INVALID_ARGUMENT", str(ValueTooDeep(what, depth, limits.max_value_depth)))
    return NodeResult(result.output, result.directive)


def _announce_retry(
    ctx: RunContext, path: str, call: Call, attempt: int, error: BaseException | None, pause: float
) -> float:
    """A STEP_RETRYING event for the protocol's failed `attempt`; when the retry is due (Unix seconds)."""
    # to the nanosecond, as the step's record keeps it (_back_off): every rendering of it agrees
    due = int((time.time() + max(0.0, pause)) * 1e9) / 1e9
    ctx.emit(
        E.TASK_EVENT_TYPE_STEP_RETRYING,
        step_path=path,
        protocol=call.protocol,
        attempt=attempt,
        flush_soon=True,
        message=f"attempt {attempt} failed: {error}; retrying in {pause:.3f}s",
        data={
            "error": str(error),
            "code": getattr(error, "code", ""),
            "wait_seconds": pause,
            "retry_time": rfc3339_of(due),
        },
    )
    return due


async def _attempt(call: Call, path: str, ctx: RunContext, observer: StepObserver) -> NodeResult:
    if ctx.rate_limits is not None:
        asks = call.asks or ((PROTOCOL_KEY + call.protocol, 1.0),)
        await take_units(ctx, path, call.protocol, asks, observer.deadline, observer)
    state = ctx.state(path)
    state.attempts += 1
    context = CallContext(
        task_id=ctx.task.task_id,
        step_path=path,
        attempt=state.attempts,
        idempotency_key=f"{ctx.task.task_id}/{path}/{call.protocol}",
        workflow_id=ctx.task.workflow_id,
        workflow_version=ctx.task.workflow_version,
        priority=ctx.task.priority,
    )
    try:
        result = await ctx.caller.call(
            call.protocol,
            call.input,
            context,
            timeout=call.attempt_timeout,
            stream=call.stream,
            observer=observer,
            idle_timeout=call.idle_timeout,
        )
    except ProtocolCallError as exc:
        if exc.usage and _usage_problem(exc.usage) is None:  # a failed attempt's usage counts too
            ctx.add_usage(path, exc.usage)
        raise
    if result.usage:
        if (problem := _usage_problem(result.usage)) is not None:
            raise ProtocolCallError("INVALID_ARGUMENT", f"{call.protocol} answered with {problem}", final=True)
        ctx.add_usage(path, result.usage)
    return _keepable(result, call.protocol, ctx.limits)


def _usage_problem(usage: Mapping[str, float]) -> str | None:
    """What is wrong with the usage a plugin reported, if anything: it is summed into the step's,
    the task's and a counter (a label), so amounts must be finite and not negative, and names few
    and short."""
    if len(usage) > MAX_USAGE_NAMES:
        return f"{len(usage)} usage names; at most {MAX_USAGE_NAMES} are allowed"
    for name, amount in usage.items():
        if not USAGE_NAME.fullmatch(name):
            return f"the usage name {name[:80]!r}: a name is 1-128 characters, none a control character"
        if not (math.isfinite(amount) and amount >= 0):
            return f"usage {name} = {amount}: an amount is a finite number, 0 or more"
    return None


async def call_with_retries(call: Call, path: str, ctx: RunContext, observer: StepObserver | None = None) -> NodeResult:
    """Call a protocol, retrying per policy; every retry is an event. Raises ProtocolCallError.

    The policy's attempts span the run's lives: the calls that failed before a crash or a
    shutdown (the step's `failed_attempts`) count, the call cut off by it does not. The first
    attempt runs without any retry machinery (most calls succeed, and thousands may be in
    flight at once); when it fails with a retryable code, tenacity runs the rest."""
    _sendable(call, ctx.limits)
    observer = observer or StepObserver(ctx, path)
    policy = call.retry
    if ctx.state(path).HasField("retry_time"):  # resumed in a backoff: what is left of it first
        await _back_off(ctx, path, observer, ctx.state(path).retry_time.ToNanoseconds() / 1e9)
    try:
        return await _attempt(call, path, ctx, observer)
    except ProtocolCallError as first:
        failed = _failed(ctx, path)
        if failed >= policy.max_attempts or not _retryable(policy, first):
            raise
        due = _announce_retry(ctx, path, call, failed, first, _pause_after(policy, failed, first))
    await _back_off(ctx, path, observer, due)

    def before_sleep(retry_state: RetryCallState) -> None:
        nonlocal due
        error = retry_state.outcome.exception() if retry_state.outcome else None
        pause = retry_state.next_action.sleep if retry_state.next_action else 0.0
        due = _announce_retry(ctx, path, call, failed + retry_state.attempt_number, error, pause)

    # tenacity counts from the first retry of this life: its attempt n is the protocol's attempt failed + n
    retrying = AsyncRetrying(
        stop=stop_after_attempt(policy.max_attempts - failed),
        wait=lambda retry_state: _pause_after(
            policy,
            failed + retry_state.attempt_number,
            retry_state.outcome.exception() if retry_state.outcome else None,
        ),
        retry=retry_if_exception(lambda error: _retryable(policy, error)),
        before_sleep=before_sleep,
        sleep=lambda _pause: _back_off(ctx, path, observer, due),  # the time before_sleep announced
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            try:
                return await _attempt(call, path, ctx, observer)
            except ProtocolCallError:
                _failed(ctx, path)
                raise
    raise AssertionError("unreachable: tenacity re-raises the last error")


def _pause_after(policy: RetryPolicy, failed: int, error: BaseException | None) -> float:
    """Seconds to wait before the retry that follows `failed` failed calls: the policy's backoff,
    or, if longer, the pause every instance of the protocol asked for (a RetryInfo: a provider's
    Retry-After); at most MAX_PAUSE_SECONDS, whatever a plugin asks (the step's and the task's
    timeouts come first anyway)."""
    asked = error.protocol_paused_for if isinstance(error, ProtocolCallError) else None
    return max(backoff(policy, failed), min(asked or 0.0, MAX_PAUSE_SECONDS))


async def _back_off(ctx: RunContext, path: str, observer: StepObserver, until: float) -> None:
    """Wait until `until` (Unix seconds) before a retry, as a timer of the run: the retry's time is
    kept in the step's record (a run resumed after a crash waits out the rest), and a run whose
    every leaf waits long enough parks meanwhile (suspensions.py), resuming when the retry is due or
    the step's timeout runs out, whichever is first."""
    ctx.state(path).retry_time.CopyFrom(timestamp_of(int(until * 1e9)))
    try:
        await ctx.suspensions.pause(path, until if observer.deadline is None else min(until, observer.deadline))
    finally:
        if not ctx.suspensions.parking:  # a parked run keeps it: its next life waits out the rest
            ctx.state(path).ClearField("retry_time")


def _failed(ctx: RunContext, path: str) -> int:
    """Count a failed call of the step's current protocol; how many have failed, in all its lives."""
    state = ctx.state(path)
    state.failed_attempts += 1
    return state.failed_attempts
