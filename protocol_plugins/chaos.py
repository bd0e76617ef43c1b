"""chaos: a plugin that misbehaves on request, to prove the orchestrator survives it.

The `chaos` protocol reads `action` from its input:

- `ok`: answer with the input.
- `fail`: fail with gRPC code `code` (default UNAVAILABLE).
- `fail_times`: fail with `code` for the first `times` attempts of each step, then answer.
- `slow`: sleep `ms` milliseconds, then answer.
- `hang`: never answer (until the caller gives up or cancels).
- `malformed`: answer with bytes that are not an ExecuteResponse.
- `die`: kill this process at once (exit code 1); with `marker` (a file path), only if the
  file does not exist yet, and create it first: a plugin that dies once, then is restarted.
"""

from __future__ import annotations

import asyncio
import collections
import os
from pathlib import Path
from typing import Any

import grpc

from mcp_sdk.plugin import Context, Plugin, ProtocolError
from mcp_sdk.proto import protocol_pb2

MALFORMED = b"\xff\xff\xff\xff this is not a protobuf message"


class ChaosPlugin(Plugin):
    """A Plugin whose Execute can also answer with raw bytes. It serves no ExecuteMany, so the
    orchestrator calls it with Execute, as it calls any plugin without it."""

    call_streams = False

    def serialize_execute_response(self, response: Any) -> bytes:
        return response if isinstance(response, bytes) else super().serialize_execute_response(response)

    async def Execute(self, request: protocol_pb2.ExecuteRequest, context: grpc.aio.ServicerContext) -> Any:
        if request.input.fields["action"].string_value == "malformed":
            return MALFORMED
        return await super().Execute(request, context)


plugin = ChaosPlugin("chaos")
seen: collections.Counter[str] = collections.Counter()
cancelled = {"count": 0}


def _die_unless_marked(marker: object) -> None:
    """Exit at once, mid-call; with a marker file, only the first time."""
    if marker and Path(str(marker)).exists():
        return
    if marker:
        Path(str(marker)).write_text("died")
    os._exit(1)


@plugin.protocol("chaos", description="Misbehaves as its input asks: fail, hang, slow, malformed, die")
async def chaos(data: dict[str, Any], ctx: Context) -> dict[str, Any]:
    action = str(data.get("action", "ok"))
    seen[ctx.idempotency_key] += 1
    code = grpc.StatusCode[str(data.get("code", "UNAVAILABLE"))]
    if action == "fail":
        raise ProtocolError(code, f"chaos: failing with {code.name} as asked")
    if action == "fail_times" and seen[ctx.idempotency_key] <= int(data.get("times", 1)):
        raise ProtocolError(code, f"chaos: attempt {seen[ctx.idempotency_key]} fails as asked")
    if action == "die":
        _die_unless_marked(data.get("marker"))
    try:
        if action == "slow":
            await asyncio.sleep(float(data.get("ms", 1000)) / 1000)
        elif action == "hang":
            await asyncio.Event().wait()
    except asyncio.CancelledError:
        cancelled["count"] += 1
        raise
    return {
        **data,
        "served_by": os.getpid(),
        "calls_seen": seen[ctx.idempotency_key],
        "cancelled_so_far": cancelled["count"],
    }


@plugin.protocol("chaos_stats", description="Calls seen by idempotency key, and cancellations")
async def chaos_stats(data: dict[str, Any], ctx: Context) -> dict[str, Any]:
    return {"calls": dict(seen), "cancelled": cancelled["count"], "pid": os.getpid()}


if __name__ == "__main__":
    plugin.main()
