"""How a node ends: NodeResult (what it produced) or NodeFailed (why not). Each node kind's
runner returns the one or raises the other (engine/context.py carries both for its callers)."""

from __future__ import annotations

from dataclasses import dataclass

from mcp_sdk.proto import protocol_pb2
from mcp_server.engine.payload import Payload
from mcp_server.engine.texts import clipped


@dataclass(frozen=True)
class NodeResult:
    """What a node produced: its output value and, from a step, the protocol's directive."""

    output: Payload
    directive: protocol_pb2.Directive | None = None


class NodeFailed(Exception):
    """A node failed; `code` is a gRPC status code name, the message names the node."""

    def __init__(self, code: str, message: str) -> None:
        message = clipped(message)
        super().__init__(message)
        self.code = code
        self.message = message
