"""How the engine calls a protocol: the caller it is given, and what goes in and out of a call."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from mcp_sdk.proto import protocol_pb2
from mcp_server.engine.payload import Payload
from mcp_server.engine.texts import clipped


@dataclass(frozen=True)
class CallContext:
    """Where a protocol call comes from; sent to the plugin as its ExecutionContext."""

    task_id: str
    step_path: str
    attempt: int
    idempotency_key: str
    workflow_id: str = ""
    workflow_version: int = 0
    # the task's priority: calls waiting for capacity are granted in this order
    priority: int = 0


@dataclass(frozen=True)
class CallResult:
    output: Payload
    directive: protocol_pb2.Directive | None = None
    # what the call used, as the plugin reported it (ExecuteResponse.usage)
    usage: Mapping[str, float] = field(default_factory=dict)


class ProtocolCallError(Exception):
    """A protocol call failed. `code` is the gRPC status code name, e.g. "UNAVAILABLE"."""

    def __init__(self, code: str, message: str, *, breaker_open: bool = False, final: bool = False) -> None:
        message = clipped(message)
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.breaker_open = breaker_open
        # trying the same call again cannot help (the engine refused it before sending)
        self.final = final
        # only the instance that answered failed; other instances of the protocol serve
        self.instance_only = False
        # the plugin asked for no call before this many seconds (a google.rpc.RetryInfo)...
        self.retry_after: float | None = None
        # ...and, as the caller judged it, how long until an instance of the protocol takes calls
        # again, when every one has asked for a pause (None while one takes calls)
        self.protocol_paused_for: float | None = None
        # what the failed call used, as the plugin reported it with the error
        self.usage: Mapping[str, float] = {}

    @classmethod
    def from_plugin(cls, code: str, message: str, address: str) -> ProtocolCallError:
        """The error a plugin call ended with. The orchestrator stops waiting on a call by
        cancelling its own task, never with a CANCELLED status, so a CANCELLED that comes back
        was the instance's or the transport's doing (a server shutting down, gRPC shedding a
        burst): the call may never have run, and it is UNAVAILABLE, retried by policy."""
        if code == "CANCELLED":
            return cls("UNAVAILABLE", f"instance {address} cancelled the call ({message or 'no details'})")
        return cls(code, message or code)


class CallObserver(Protocol):
    """What a caller reports while a call is under way; the engine turns it into events."""

    async def progress(self, progress: protocol_pb2.Progress) -> None: ...

    def breaker_changed(self, protocol: str, old: str, new: str) -> None: ...

    def waiting(self, protocol: str, needs: str, why: str) -> None:
        """The call waits for an instance with enough free capacity (`needs`, described)."""
        ...

    def granted(self, protocol: str, address: str) -> None:
        """The waiting call got capacity on `address` and starts."""
        ...


class ProtocolCaller(Protocol):
    """Calls one protocol once. Retries, fallbacks and step timeouts are the engine's job;
    the caller applies the per-attempt deadline and the protocol's circuit breaker."""

    async def call(
        self,
        protocol: str,
        input_data: Payload,
        context: CallContext,
        *,
        timeout: float | None,
        stream: bool = False,
        observer: CallObserver | None = None,
        idle_timeout: float | None = None,
    ) -> CallResult:
        """`idle_timeout` (with `stream`): the longest the call may go without a message; past it
        the call fails DEADLINE_EXCEEDED."""
        ...
