"""A plugin for the retry tests: `quota` answers RESOURCE_EXHAUSTED with a RetryInfo of
`retry_after` s (a provider's 429 with Retry-After) in the process whose pid is `refuse_pid`,
and its pid everywhere else; run it twice for two instances of one protocol."""

from __future__ import annotations

import os
from typing import Any

import grpc

from mcp_sdk.plugin import Context, Plugin, ProtocolError

plugin = Plugin("quota-box")


@plugin.protocol("quota", description="Asks for a pause in the process `refuse_pid`, answers elsewhere")
async def quota(data: dict[str, Any], ctx: Context) -> dict[str, Any]:
    if int(data.get("refuse_pid", 0)) == os.getpid():
        raise ProtocolError(
            grpc.StatusCode.RESOURCE_EXHAUSTED, "the provider says: slow down", retry_after=float(data["retry_after"])
        )
    return {"pid": os.getpid()}
