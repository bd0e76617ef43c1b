"""Map nodes: a CEL expression yields a list; the body runs once per item.

Each body run sees the item as its input and `item` / `index` in CEL. Output: the list of
results in item order.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mcp_server.engine.context import NodeFailed, NodeResult, RunContext
from mcp_server.engine.executor import evaluate, execute, runs
from mcp_server.engine.fanout import Branch, join_branches
from mcp_server.engine.payload import Payload
from mcp_server.engine.plan import MapPlan


@runs("map")
async def run_map(node: MapPlan, path: str, value: Payload, ctx: RunContext, scope: Mapping[str, Any]) -> NodeResult:
    items = evaluate(node.items, ctx, value, scope, node.id, "items")
    if not isinstance(items, list):
        raise NodeFailed(
            "INVALID_ARGUMENT", f"map {node.id}: items `{node.items.source}` yielded {type(items).__name__}, not a list"
        )
    if len(items) > node.max_items:
        raise NodeFailed(
            "RESOURCE_EXHAUSTED", f"map {node.id}: {len(items)} items exceed the limit of {node.max_items}"
        )

    def branch(index: int, item: Any) -> Branch:
        item_scope = {**scope, "item": item, "index": index}
        return lambda: execute(node.body, f"{path}/{node.body.id}[{index}]", Payload.of_python(item), ctx, item_scope)

    results = await join_branches(
        f"map {node.id}",
        [branch(i, item) for i, item in enumerate(items)],
        required=len(items),
        fail_fast=node.fail_fast,
        max_concurrency=node.max_concurrency,
    )
    return NodeResult(Payload.list_of([results[i].output for i in range(len(items))]))
