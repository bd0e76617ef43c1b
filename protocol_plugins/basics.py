"""basics: general-purpose protocols that most workflows need now and then.

- `echo`: returns its input. With a step `input` expression it is the way to shape data
  between steps (pick fields, rename, combine earlier outputs) without a plugin of your own.
"""

from __future__ import annotations

from typing import Any

from mcp_sdk.plugin import Context, Plugin
from mcp_sdk.proto import protocol_pb2

plugin = Plugin("basics")


@plugin.protocol(
    "echo",
    type=protocol_pb2.PROTOCOL_TYPE_TRANSFORM,
    description="Returns its input unchanged (shape it with the step's input expression)",
)
async def echo(data: dict[str, Any], ctx: Context) -> dict[str, Any]:
    return data


if __name__ == "__main__":
    plugin.main()
