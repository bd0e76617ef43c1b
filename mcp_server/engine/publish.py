"""Publish nodes: publish an event as the task's owner (EventService's rules: every workflow whose
trigger takes it gets a task), once per node of a task, and output what started.

The event's id is made from the task and the step path, so a node run again after a crash (the
publish done, its completion not yet written) starts nothing twice. A task that an event published
by a task started carries the chain's length (HOPS_LABEL); past MAX_HOPS a publish is refused, so
a workflow that publishes the event it starts on ends."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from mcp_server.engine.context import NodeFailed, NodeResult, RunContext
from mcp_server.engine.executor import evaluate, runs
from mcp_server.engine.payload import Payload
from mcp_server.engine.plan import PublishPlan
from mcp_server.engine.ports.events import HOPS_LABEL, Published
from mcp_server.engine.values import as_object
from mcp_server.engine.waiting import event_key
from mcp_server.errors import McpError

MAX_HOPS = 16


@runs("publish")
async def run_publish(
    node: PublishPlan, path: str, value: Payload, ctx: RunContext, scope: Mapping[str, Any]
) -> NodeResult:
    publisher = ctx.publisher
    if publisher is None:
        raise NodeFailed("UNIMPLEMENTED", f"publish {node.id}: this server publishes no events")
    data = (
        value.as_object().python()
        if node.data is None
        else as_object(evaluate(node.data, ctx, value, scope, node.id, "data"))
    )
    key = (
        ""
        if node.key is None
        else event_key(evaluate(node.key, ctx, value, scope, node.id, "key"), f"publish {node.id}")
    )
    hops = _hops(ctx.task.labels.get(HOPS_LABEL, "0"))
    if hops >= MAX_HOPS:
        raise NodeFailed(
            "FAILED_PRECONDITION",
            f"publish {node.id}: this task comes at the end of a chain of {hops} events published by tasks,"
            f" the most there may be (a workflow that publishes the event it starts on would never end)",
        )
    event_id = "publish:" + hashlib.sha256(f"{ctx.task.task_id}\n{path}".encode()).hexdigest()[:40]
    ctx.record_input(path, Payload.of_python(data))
    try:
        published = await ctx.store_call(
            lambda: publisher.publish_for(node.event, data, event_id, ctx.task.owner, hops + 1, key)
        )
    except McpError as exc:
        raise NodeFailed(exc.code.name, f"publish {node.id}: event {node.event!r}: {exc.message}") from None
    return NodeResult(Payload.of_python(_output(published)))


def _hops(text: str) -> int:
    return int(text) if text.isdigit() else 0


def _output(published: Published) -> dict[str, Any]:
    return {
        "event_id": published.event_id,
        "tasks": [{"workflow_id": w, "task_id": t} for w, t in published.started],
        "refused": [{"workflow_id": w, "message": m} for w, m in published.refused],
        "woken": [{"task_id": t, "step_path": p} for t, p in published.woken],
    }
