"""A plugin whose manifest declares an input schema 13 levels deep."""

from __future__ import annotations

from typing import Any

from mcp_sdk.plugin import Context, Plugin

plugin = Plugin("deep-schema")
schema: dict[str, Any] = {"type": "string"}
for _ in range(6):  # 13 levels: past a limit of 8 (protobuf itself cannot carry a schema past 32)
    schema = {"type": "object", "properties": {"x": schema}}


@plugin.protocol("deep_schema", input_schema=schema)
async def deep_schema(data: dict[str, Any], ctx: Context) -> dict[str, Any]:
    return data
