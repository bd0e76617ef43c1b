"""Sequence nodes: children in order, each output the next input; the output is the last one."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mcp_server.engine.context import NodeResult, RunContext
from mcp_server.engine.executor import child_path, execute, runs
from mcp_server.engine.payload import Payload
from mcp_server.engine.plan import SequencePlan


@runs("sequence")
async def run_sequence(
    node: SequencePlan, path: str, value: Payload, ctx: RunContext, scope: Mapping[str, Any]
) -> NodeResult:
    result = NodeResult(value)
    for child in node.children:
        result = await execute(child, child_path(path, child.id), result.output, ctx, scope)
    return NodeResult(result.output, result.directive)
