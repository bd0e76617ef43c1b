"""Compiling the nodes that wait: a wait for a signal or an event, and a sleep until a time."""

from __future__ import annotations

import re

from mcp_sdk.proto import workflow_pb2
from mcp_server.engine.compiler.durations import MAX_DURATION_SECONDS, duration
from mcp_server.engine.compiler.fields import expression
from mcp_server.engine.compiler.scope import Scope, builds
from mcp_server.engine.compiler.triggers import EVENT_NAME, event_expression
from mcp_server.engine.compiler.workflow_scope import schema_checks
from mcp_server.engine.plan import SleepPlan, WaitPlan
from mcp_server.engine.ports.waits import event_signal
from mcp_server.engine.schemas import SchemaInvalid, compile_schema
from mcp_server.engine.values import struct_to_dict

SIGNAL_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
CONDITION_VARIABLES = frozenset({"event", "input"})  # what a wait's condition reads, as an event reaches it


@builds("wait")
def compile_wait(node_id: str, wait: workflow_pb2.WaitNode, path: str, scope: Scope, depth: int) -> WaitPlan:
    if wait.event:
        if wait.signal:
            scope.violations.add(f"{path}.signal", "a wait waits for a signal or for an event, not both")
        if not EVENT_NAME.match(wait.event):
            scope.violations.add(f"{path}.event", "an event name is 1-128 letters, digits, '.', '_', ':', '/' or '-'")
    elif wait.key or wait.HasField("lookback") or wait.condition:
        field = "key" if wait.key else "lookback" if wait.HasField("lookback") else "condition"
        scope.violations.add(f"{path}.{field}", "is for a wait for an event: set `event`")
    elif not SIGNAL_NAME.match(wait.signal):
        scope.violations.add(f"{path}.signal", "a signal name is 1-64 letters, digits, '.', '_' or '-'")
    zero = wait.timeout.seconds == 0 and wait.timeout.nanos == 0  # zero: as long as the task may run
    timeout = None if zero else duration(wait, "timeout", f"{path}.timeout", scope.violations)
    if wait.on_timeout and timeout is None:
        scope.violations.add(f"{path}.on_timeout", "needs a timeout: without one the wait lasts as long as the task")
    schema = None
    if wait.HasField("schema"):
        try:
            schema = compile_schema(struct_to_dict(wait.schema), **schema_checks(scope))
        except SchemaInvalid as exc:
            scope.violations.add(f"{path}.schema", str(exc))
    lookback = 0.0
    if wait.event and wait.HasField("lookback"):
        lookback = duration(wait, "lookback", f"{path}.lookback", scope.violations) or 0.0
        most = scope.limits.event_lookback_seconds
        if lookback > most:
            scope.violations.add(
                f"{path}.lookback",
                f"this server keeps published events {most:g}s (MCP_LIMIT_EVENT_LOOKBACK_SECONDS): at most that",
            )
    plan = WaitPlan(
        id=node_id,
        signal=event_signal(wait.event) if wait.event else wait.signal,
        timeout=timeout,
        on_timeout=expression(wait.on_timeout, f"{path}.on_timeout", scope),
        prompt=expression(wait.prompt, f"{path}.prompt", scope),
        schema=schema,
        event=wait.event,
        key=expression(wait.key, f"{path}.key", scope),
        lookback=lookback,
        condition=event_expression(
            wait.condition, f"{path}.condition", scope.limits, scope.violations, CONDITION_VARIABLES
        ),
    )
    scope.waits[node_id] = plan
    scope.suspends = True
    return plan


@builds("sleep")
def compile_sleep(node_id: str, sleep: workflow_pb2.SleepNode, path: str, scope: Scope, depth: int) -> SleepPlan:
    scope.suspends = True
    seconds = duration(sleep, "duration", f"{path}.duration", scope.violations)
    if sleep.HasField("duration") == bool(sleep.until):
        scope.violations.add(
            path, f"a sleep needs either a duration (at most {MAX_DURATION_SECONDS} s) or `until`, not both"
        )
    return SleepPlan(node_id, seconds, expression(sleep.until, f"{path}.until", scope))
