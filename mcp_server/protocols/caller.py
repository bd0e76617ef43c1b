"""GrpcProtocolCaller: the engine's ProtocolCaller over real gRPC.

One attempt = look the protocol up, wait for a place in its bulkhead, pass its breaker, call
Execute (or ExecuteStream) with the attempt deadline, and turn whatever happens into a
CallResult or a ProtocolCallError. The engine decides about retries and fallbacks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import cast

import grpc
import pybreaker

from mcp_server.engine.payload import Payload
from mcp_server.engine.ports import CallContext, CallObserver, CallResult, ProtocolCallError
from mcp_server.proto import protocol_pb2
from mcp_server.protocols.breakers import UNHEALTHY_CODES, BreakerBoard
from mcp_server.protocols.channels import ChannelPool
from mcp_server.protocols.registry import ProtocolDirectory
from mcp_server.telemetry.tracing import TaskTracer, finish_call


class GrpcProtocolCaller:
    """Calls registered plugins over gRPC."""

    def __init__(self, directory: ProtocolDirectory, channels: ChannelPool, breakers: BreakerBoard,
                 concurrency_overrides: dict[str, int] | None = None, tracer: TaskTracer | None = None) -> None:
        self.tracer = tracer
        self.directory = directory
        self.channels = channels
        self.breakers = breakers
        self.concurrency_overrides = dict(concurrency_overrides or {})
        self._bulkheads: dict[str, asyncio.Semaphore] = {}

    def _bulkhead(self, protocol: str, limit: int) -> asyncio.Semaphore | None:
        if limit <= 0:
            return None
        semaphore = self._bulkheads.get(protocol)
        if semaphore is None:
            semaphore = self._bulkheads[protocol] = asyncio.Semaphore(limit)
        return semaphore

    async def call(self, protocol: str, input_data: Payload, context: CallContext, *,
                   timeout: float | None, stream: bool = False, observer: CallObserver | None = None) -> CallResult:
        entry = self.directory.lookup(protocol)
        if entry is None:
            await self.directory.refresh(force=True)
            entry = self.directory.lookup(protocol)
        if entry is None:
            raise ProtocolCallError("UNAVAILABLE", f"no plugin is registered for protocol {protocol!r}")
        request = protocol_pb2.ExecuteRequest(protocol=protocol, input=input_data.struct(), context=_context(context, timeout))
        bulkhead = self._bulkhead(protocol, self.concurrency_overrides.get(protocol, entry.manifest.max_concurrency))
        if self.tracer is None:
            return await self._bounded(bulkhead, protocol, entry.address, request, timeout, stream, observer, ())
        span, metadata = self.tracer.start_call(context.task_id, context.step_path, protocol)
        try:
            result = await self._bounded(bulkhead, protocol, entry.address, request, timeout, stream, observer, metadata)
        except BaseException as exc:
            finish_call(span, exc)
            raise
        finish_call(span)
        return result

    async def _bounded(self, bulkhead: asyncio.Semaphore | None, protocol: str, address: str, request: protocol_pb2.ExecuteRequest,
                       timeout: float | None, stream: bool, observer: CallObserver | None, metadata: Sequence[tuple[str, str]]) -> CallResult:
        if bulkhead is None:
            return await self._guarded(protocol, address, request, timeout, stream, observer, metadata)
        async with bulkhead:
            return await self._guarded(protocol, address, request, timeout, stream, observer, metadata)

    async def _guarded(self, protocol: str, address: str, request: protocol_pb2.ExecuteRequest,
                       timeout: float | None, stream: bool, observer: CallObserver | None, metadata: Sequence[tuple[str, str]]) -> CallResult:
        before = self.breakers.state_name(protocol)
        try:
            with self.breakers.get(protocol).calling():
                response = await self._invoke(address, request, timeout, observer if stream else None, metadata)
        except pybreaker.CircuitBreakerError:
            self._report_breaker(protocol, before, observer)
            raise ProtocolCallError("UNAVAILABLE", f"the circuit breaker of {protocol} is open", breaker_open=True) from None
        except ProtocolCallError as exc:
            self.directory.record_health(protocol, exc.code not in UNHEALTHY_CODES)
            self._report_breaker(protocol, before, observer)
            raise
        self.directory.record_health(protocol, True)
        self._report_breaker(protocol, before, observer)
        directive = response.directive if response.HasField("directive") else None
        return CallResult(Payload.of_struct(response.output), directive)

    def _report_breaker(self, protocol: str, before: str, observer: CallObserver | None) -> None:
        after = self.breakers.state_name(protocol)
        if after != before and observer is not None:
            observer.breaker_changed(protocol, before, after)

    async def _invoke(self, address: str, request: protocol_pb2.ExecuteRequest, timeout: float | None,
                      observer: CallObserver | None, metadata: Sequence[tuple[str, str]] = ()) -> protocol_pb2.ExecuteResponse:
        stub = self.channels.stub(address)
        try:
            if observer is None:
                response = await stub.Execute(request, timeout=timeout, metadata=tuple(metadata) or None)
                if response is None:  # grpc hands back None when the bytes do not parse
                    raise ProtocolCallError("INTERNAL", "the plugin's response is not a valid ExecuteResponse (it does not parse)")
                return cast(protocol_pb2.ExecuteResponse, response)
            async for message in stub.ExecuteStream(request, timeout=timeout, metadata=tuple(metadata) or None):
                if message is None:
                    raise ProtocolCallError("INTERNAL", "the plugin's stream sent a message that is not an ExecuteStreamResponse")
                if message.HasField("progress"):
                    await observer.progress(message.progress)
                elif message.HasField("result"):
                    return cast(protocol_pb2.ExecuteResponse, message.result)
        except grpc.aio.AioRpcError as exc:
            details = exc.details() or ""
            if exc.code() == grpc.StatusCode.INTERNAL and "pars" in details.lower():
                details = f"the plugin's response is not a valid ExecuteResponse ({details})"
            elif exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED and timeout is not None:
                details = f"the attempt deadline of {timeout:g}s ran out ({details})"
            raise ProtocolCallError(exc.code().name, details or exc.code().name) from None
        raise ProtocolCallError("INTERNAL", "the plugin's stream ended without a result")


def _context(context: CallContext, timeout: float | None) -> protocol_pb2.ExecutionContext:
    message = protocol_pb2.ExecutionContext(
        task_id=context.task_id, step_path=context.step_path, attempt=context.attempt,
        idempotency_key=context.idempotency_key, workflow_id=context.workflow_id,
        workflow_version=context.workflow_version)
    if timeout is not None:
        message.deadline.FromNanoseconds(time.time_ns() + int(timeout * 1e9))
    return message
