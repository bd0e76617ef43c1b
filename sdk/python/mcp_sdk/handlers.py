"""What a protocol handler works with: the call's Context, the Reply with a directive (a
supervisor's verdict, a router's next state), and ProtocolError to answer with a gRPC code."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2

from mcp_sdk.proto import protocol_pb2
from mcp_sdk.values import dict_to_struct


class ProtocolError(Exception):
    """Raise from a handler to answer with a specific gRPC status code. With `retry_after`
    (seconds), the answer carries a google.rpc.RetryInfo: a provider's 429 with Retry-After,
    passed on (RESOURCE_EXHAUSTED, say); the orchestrator sends this instance no call until then."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        retry_after: float | None = None,
        usage: dict[str, float] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after
        # what the failed call used (the plugin fills it from ctx.report_usage): sent as a detail
        self.usage = dict(usage or {})

    def status(self) -> status_pb2.Status:
        """The answer as a google.rpc.Status (with its RetryInfo, if any)."""
        status = status_pb2.Status(code=self.code.value[0], message=self.message)
        if self.retry_after is not None:
            delay = duration_pb2.Duration()
            delay.FromNanoseconds(int(max(0.0, self.retry_after) * 1e9))
            status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        if self.usage:  # a failed call's usage: an ExecuteResponse with only its usage, as a detail
            status.details.add().Pack(protocol_pb2.ExecuteResponse(usage=self.usage))
        return status

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        """The status details as gRPC carries them (empty without a RetryInfo or usage)."""
        if self.retry_after is None and not self.usage:
            return ()
        return (("grpc-status-details-bin", self.status().SerializeToString()),)


@dataclass
class Reply:
    """An output with a directive for the orchestrator."""

    output: dict[str, Any] = field(default_factory=dict)
    directive: protocol_pb2.Directive | None = None


def accept(output: dict[str, Any] | None = None, **extra: Any) -> Reply:
    """Supervisor verdict: accept; `output`, when given, replaces the children's outputs."""
    decision = protocol_pb2.SupervisorDecision(verdict=protocol_pb2.VERDICT_ACCEPT)
    if output is not None:
        decision.output.CopyFrom(dict_to_struct(output))
    return Reply(extra, protocol_pb2.Directive(decision=decision))


def retry(
    feedback: str = "", children: list[str] | None = None, per_child: dict[str, str] | None = None, **extra: Any
) -> Reply:
    """Supervisor verdict: run `children` (all when empty) again with this feedback."""
    decision = protocol_pb2.SupervisorDecision(
        verdict=protocol_pb2.VERDICT_RETRY,
        feedback=feedback,
        retry_children=children or [],
        child_feedback=per_child or {},
    )
    return Reply(extra, protocol_pb2.Directive(decision=decision))


def fail(reason: str, **extra: Any) -> Reply:
    """Supervisor verdict: fail the supervised node with `reason`."""
    return Reply(
        extra,
        protocol_pb2.Directive(
            decision=protocol_pb2.SupervisorDecision(verdict=protocol_pb2.VERDICT_FAIL, reason=reason)
        ),
    )


def goto(state: str, **output: Any) -> Reply:
    """Router answer: the enclosing adaptive node goes to `state` next."""
    return Reply(output, protocol_pb2.Directive(next_state=state))


class Context:
    """What a handler knows about the call: where it comes from, and a way to report progress."""

    def __init__(
        self,
        request: protocol_pb2.ExecuteRequest,
        grpc_context: grpc.aio.ServicerContext,
        progress_queue: asyncio.Queue[protocol_pb2.Progress] | None = None,
        metadata: dict[str, str] | None = None,
    ) -> None:
        self.task_id = request.context.task_id
        self.step_path = request.context.step_path
        self.attempt = request.context.attempt
        self.idempotency_key = request.context.idempotency_key
        self.grpc_context = grpc_context  # of the call; for a call carried by ExecuteMany, of that stream
        # the caller's metadata, e.g. W3C `traceparent` to join the orchestrator's trace
        if metadata is None:
            metadata = {k: v for k, v in (grpc_context.invocation_metadata() or ()) if isinstance(v, str)}
        self.metadata = metadata
        deadline = request.context.deadline  # read as numbers: ToNanoseconds raises for nanos out of range
        self._deadline = deadline.seconds + deadline.nanos / 1e9 if request.context.HasField("deadline") else None
        self._progress = progress_queue
        self.usage: dict[str, float] = {}

    def report_usage(self, **amounts: float) -> None:
        """Add to what this call used (prompt_tokens=..., completion_tokens=..., cost=...): sent
        with the answer as ExecuteResponse.usage, and summed per step and per task by the engine."""
        for name, amount in amounts.items():
            self.usage[name] = self.usage.get(name, 0.0) + float(amount)

    def time_remaining(self) -> float | None:
        """Seconds until the caller's deadline, or None if it set none."""
        if self._deadline is not None:
            return max(0.0, self._deadline - time.time())
        remaining: float | None = self.grpc_context.time_remaining()
        return remaining

    @property
    def streaming(self) -> bool:
        """Whether the orchestrator called ExecuteStream (the step has `stream: true`): progress goes out."""
        return self._progress is not None

    async def progress(self, fraction: float, message: str = "", data: dict[str, Any] | None = None) -> None:
        """Report progress (with `data`, e.g. the tokens generated since the last report); sent to
        the orchestrator when it called ExecuteStream, which emits it as a PROGRESS event."""
        if self._progress is not None:
            update = protocol_pb2.Progress(fraction=fraction, message=message)
            if data:
                update.data.CopyFrom(dict_to_struct(data))
            await self._progress.put(update)


Handler = Callable[[dict[str, Any], Context], Awaitable[Any] | Any]
