"""Compiling Workflow.triggers (the events that start a task of the workflow, each with a CEL
filter and input over `event`: the published event's name, data, labels and id), Workflow.cancel_on
(the events that cancel one) and the publish nodes that publish events."""

from __future__ import annotations

import re

from mcp_sdk.proto import workflow_pb2
from mcp_server.engine.cel import Expression, ExpressionError, compile_expression
from mcp_server.engine.compiler.fields import expression
from mcp_server.engine.compiler.scope import Scope, builds
from mcp_server.engine.plan import CancelOnPlan, PublishPlan, TriggerPlan
from mcp_server.errors import ViolationCollector
from mcp_server.settings import Limits

EVENT_NAME = re.compile(r"^[A-Za-z0-9._:/-]{1,128}$")
EVENT_VARIABLES = frozenset({"event"})  # what a trigger's CEL may read: it runs when the event is published
MAX_TRIGGERS = 16
MAX_CANCEL_ON = 4
KEY_VARIABLES = frozenset({"input"})  # a cancel_on key is worked out as the task is submitted
CONDITION_VARIABLES = frozenset({"event", "input"})  # a cancel_on condition, as the event is published


def compile_triggers(
    workflow: workflow_pb2.Workflow, limits: Limits, violations: ViolationCollector
) -> tuple[TriggerPlan, ...]:
    if len(workflow.triggers) > MAX_TRIGGERS:
        violations.add("workflow.triggers", f"has {len(workflow.triggers)} triggers; at most {MAX_TRIGGERS}")
    compiled = []
    for i, trigger in enumerate(workflow.triggers):
        path = f"workflow.triggers[{i}]"
        if not EVENT_NAME.match(trigger.event):
            violations.add(f"{path}.event", "must be 1-128 letters, digits, '.', '_', ':', '/' or '-'")
        given = event_expression(trigger.filter, f"{path}.filter", limits, violations)
        made = event_expression(trigger.input, f"{path}.input", limits, violations)
        compiled.append(TriggerPlan(trigger.event, given, made))
    return tuple(compiled)


def compile_cancel_on(
    workflow: workflow_pb2.Workflow, limits: Limits, violations: ViolationCollector
) -> tuple[CancelOnPlan, ...]:
    if len(workflow.cancel_on) > MAX_CANCEL_ON:
        violations.add("workflow.cancel_on", f"has {len(workflow.cancel_on)} events; at most {MAX_CANCEL_ON}")
    compiled, seen = [], set()
    starting = {trigger.event for trigger in workflow.triggers}
    for i, cancel in enumerate(workflow.cancel_on):
        path = f"workflow.cancel_on[{i}]"
        if not EVENT_NAME.match(cancel.event):
            violations.add(f"{path}.event", "must be 1-128 letters, digits, '.', '_', ':', '/' or '-'")
        elif cancel.event in seen:
            violations.add(f"{path}.event", f"{cancel.event!r} is named twice: one cancel_on per event")
        elif cancel.event in starting:
            violations.add(f"{path}.event", f"{cancel.event!r} starts the workflow (a trigger): it cannot cancel it")
        seen.add(cancel.event)
        key = event_expression(cancel.key, f"{path}.key", limits, violations, KEY_VARIABLES)
        condition = event_expression(cancel.condition, f"{path}.condition", limits, violations, CONDITION_VARIABLES)
        compiled.append(CancelOnPlan(cancel.event, key, condition))
    return tuple(compiled)


@builds("publish")
def compile_publish(node_id: str, pub: workflow_pb2.PublishNode, path: str, scope: Scope, depth: int) -> PublishPlan:
    if not EVENT_NAME.match(pub.event):
        scope.violations.add(f"{path}.event", "must be 1-128 letters, digits, '.', '_', ':', '/' or '-'")
    return PublishPlan(
        node_id, pub.event, expression(pub.data, f"{path}.data", scope), expression(pub.key, f"{path}.key", scope)
    )


def event_expression(
    source: str,
    path: str,
    limits: Limits,
    violations: ViolationCollector,
    variables: frozenset[str] = EVENT_VARIABLES,
) -> Expression | None:
    """CEL evaluated when an event is published (a trigger's, a wait's condition): it reads only
    `variables`, not the variables of a step's input."""
    if not source:
        return None
    if len(source) > limits.max_expression_length:
        violations.add(path, f"is {len(source)} characters; the limit is {limits.max_expression_length}")
        return None
    try:
        return compile_expression(source, limits, variables)
    except ExpressionError as exc:
        violations.add(path, f"CEL does not compile: {exc}")
        return None
