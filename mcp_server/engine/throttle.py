"""Rate limits a call takes units of before it goes (see RateLimitUse in workflow.proto): the
step's own uses (a literal or CEL key, CEL units) and `protocol:<its protocol>`. Every attempt
and every fallback asks again. A call without units waits, holding no call: it is a timer of
the run, so a run whose every branch waits that way parks until the units come (suspensions.py)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from mcp_server.engine.context import NodeFailed, RunContext
from mcp_server.engine.event_types import E
from mcp_server.engine.events import timestamp_of
from mcp_server.engine.executor import evaluate
from mcp_server.engine.instants import rfc3339_of
from mcp_server.engine.payload import Payload
from mcp_server.engine.plan import RateLimitUsePlan
from mcp_server.engine.ports import ProtocolCallError, waiter_name

PROTOCOL_KEY = "protocol:"
MAX_KEY_CHARS = 256  # as long as a limit's own key may be (registry.proto)
# the longest one wait for units lasts before the call asks again: units that come only after
# years (a huge ask under a huge burst) are waited for in bounded steps, with bounded timers
MAX_PAUSE_SECONDS = 30 * 24 * 3600.0


def asks_of(
    uses: Sequence[RateLimitUsePlan],
    protocol: str,
    call_input: Payload,
    value: Payload,
    ctx: RunContext,
    scope: Mapping[str, Any],
    node_id: str,
) -> tuple[tuple[str, float], ...]:
    """The (key, units) a call of `protocol` with `call_input` asks, one entry per key."""
    asks: dict[str, float] = {}
    for use in uses:
        key = use.key
        if use.key_expression is not None:
            found = evaluate(use.key_expression, ctx, value, scope, node_id, "rate limit key")
            if not isinstance(found, str) or not found:
                raise NodeFailed("INVALID_ARGUMENT", f"node {node_id}: a rate limit key gave {found!r}, not a string")
            if len(found) > MAX_KEY_CHARS:  # no limit is named so; a template's would keep it in the store
                raise NodeFailed(
                    "INVALID_ARGUMENT",
                    f"node {node_id}: a rate limit key gave {len(found)} characters; at most {MAX_KEY_CHARS}",
                )
            key = found
        units = 1.0
        if use.units is not None:
            given = evaluate(use.units, ctx, value, scope, node_id, "rate limit units", extra={"call": call_input})
            if isinstance(given, bool) or not isinstance(given, (int, float)) or given < 0:
                raise NodeFailed(
                    "INVALID_ARGUMENT", f"node {node_id}: rate limit units gave {given!r}, not a number >= 0"
                )
            units = float(given)
        asks[key] = asks.get(key, 0.0) + units
    asks.setdefault(PROTOCOL_KEY + protocol, 1.0)
    return tuple(asks.items())


class WaitingStep(Protocol):
    """Where a step says what it waits for (the message if its timeout runs out meanwhile)."""

    waiting_for: str


async def take_units(
    ctx: RunContext,
    path: str,
    protocol: str,
    asks: Sequence[tuple[str, float]],
    deadline: float | None = None,
    step: WaitingStep | None = None,
) -> None:
    """Wait until every ask is granted (one STEP_WAITING event per key that makes it wait), or
    until the step's `deadline` (Unix seconds): the wait counts against the step's timeout, in
    every life of the run (the deadline is kept in the step's `wait` while it waits, so a run
    that parks meanwhile resumes the step with what was left of it).
    Raises ProtocolCallError RESOURCE_EXHAUSTED (final) for an ask no limit can ever grant."""
    gate = ctx.rate_limits
    if gate is None:
        return
    announced = ""
    waiter = waiter_name(ctx.task.task_id, path)  # its place in each key's line (left in RunContext.fail)
    while True:
        # waits out a store outage
        grant = await ctx.store_call(lambda: gate.take_units(asks, waiter, ctx.task.priority))
        if grant.granted:
            if step is not None and step.waiting_for:  # it waited (in this life or the one that parked)
                ctx.state(path).ClearField("wait")
                step.waiting_for = ""
            return
        if grant.too_large:
            units = dict(asks).get(grant.key, 0.0)
            raise ProtocolCallError(
                "RESOURCE_EXHAUSTED",
                f"the call asks {units:g} units of rate limit {grant.key!r}, more than it grants in a window",
                final=True,
            )
        until = time.time() + grant.retry_after
        if grant.key != announced:
            announced = grant.key
            ctx.emit(
                E.TASK_EVENT_TYPE_STEP_WAITING,
                step_path=path,
                protocol=protocol,
                flush_soon=True,
                message=f"waiting for rate limit {grant.key!r}: units again at {rfc3339_of(until)}",
                data={"rate_limit": grant.key, "until": rfc3339_of(until)},
            )
        if step is not None:
            step.waiting_for = f"units of rate limit {grant.key!r}"
        resume = min(until, time.time() + MAX_PAUSE_SECONDS)
        if deadline is not None:
            ctx.state(path).wait.deadline.CopyFrom(timestamp_of(int(deadline * 1e9)))
            resume = min(resume, deadline)
        ctx.state(path).wait.rate_limit_keys[:] = [key for key, _ in asks if gate.limit_key(key) is not None]
        with gate.waiting(grant.key, lambda: ctx.suspensions.nudge(path)):
            await ctx.suspensions.pause(path, resume)
