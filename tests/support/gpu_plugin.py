"""A plugin for the capacity tests: `render` needs one GPU per call, `render_pair` two; the
instance counts the calls it runs at once, and `gpu_stats` reports what it saw."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from mcp_sdk.plugin import Context, Plugin

plugin = Plugin("gpu-box")
seen: dict[str, Any] = {"in_flight": 0, "max_in_flight": 0, "calls": [], "cancelled": 0}


async def _work(data: dict[str, Any], ctx: Context) -> dict[str, Any]:
    seen["in_flight"] += 1
    seen["max_in_flight"] = max(seen["max_in_flight"], seen["in_flight"])
    seen["calls"].append(str(data.get("tag", ctx.step_path)))
    try:
        await asyncio.sleep(float(data.get("ms", 100)) / 1000)
        return {"pid": os.getpid(), "tag": data.get("tag", "")}
    except asyncio.CancelledError:
        seen["cancelled"] += 1
        raise
    finally:
        seen["in_flight"] -= 1


@plugin.protocol("render", gpus=1, description="Sleeps `ms` on one GPU")
async def render(data: dict[str, Any], ctx: Context) -> dict[str, Any]:
    return await _work(data, ctx)


@plugin.protocol("render_pair", gpus=2, description="Sleeps `ms` on two GPUs")
async def render_pair(data: dict[str, Any], ctx: Context) -> dict[str, Any]:
    return await _work(data, ctx)


@plugin.protocol("gpu_stats", description="What this instance saw; `reset` clears it")
async def gpu_stats(data: dict[str, Any], ctx: Context) -> dict[str, Any]:
    report = {**seen, "pid": os.getpid()}
    if data.get("reset"):
        seen.update(in_flight=0, max_in_flight=0, calls=[], cancelled=0)
    return report
