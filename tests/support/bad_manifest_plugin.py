"""A plugin that declares negative amounts: a capacity and a call's needs."""

from __future__ import annotations

from typing import Any

from mcp_sdk.plugin import Context, Plugin

plugin = Plugin("bad-manifest", capacity={"cpu_millis": -5})


@plugin.protocol("greedy", gpus=-1, memory_mb=-2)
async def greedy(data: dict[str, Any], ctx: Context) -> dict[str, Any]:
    return data
