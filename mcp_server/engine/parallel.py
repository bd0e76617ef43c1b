"""Parallel nodes: children concurrently, joined by all / any / quorum.

Output: a map from child id to output, holding the children that completed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mcp_server.engine.context import NodeResult, RunContext
from mcp_server.engine.executor import child_path, execute, runs
from mcp_server.engine.fanout import Branch, join_branches
from mcp_server.engine.payload import Payload
from mcp_server.engine.plan import ParallelPlan, PlanNode


@runs("parallel")
async def run_parallel(
    node: ParallelPlan, path: str, value: Payload, ctx: RunContext, scope: Mapping[str, Any]
) -> NodeResult:
    def branch(child: PlanNode) -> Branch:
        return lambda: execute(child, child_path(path, child.id), value, ctx, scope)

    results = await join_branches(
        f"parallel {node.id}",
        [branch(c) for c in node.children],
        required=node.required,
        fail_fast=node.fail_fast,
        max_concurrency=node.max_concurrency,
    )
    return NodeResult(Payload.object_of({node.children[i].id: results[i].output for i in sorted(results)}))
