"""GrpcProtocolCaller: the engine's ProtocolCaller over real gRPC.

One attempt = find the protocol's usable instances, place the call on one of them (least
loaded first; through admission when the call needs capacity some instance limits), wait for
a place in the protocol's bulkhead, pass its breaker, call Execute (or ExecuteStream) with the
attempt deadline, and turn whatever happens into a CallResult or a ProtocolCallError. The
engine decides about retries and fallbacks.

A failure of one instance while others can serve counts against that instance (outlier
ejection), not against the protocol's breaker: the breaker opens only when the protocol as a
whole fails.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

import grpc
import pybreaker

from mcp_sdk.proto import protocol_pb2, registry_pb2
from mcp_server.engine.payload import Payload
from mcp_server.engine.ports import CallContext, CallObserver, CallResult, ProtocolCallError
from mcp_server.protocols.admission import Admission, Grant
from mcp_server.protocols.breakers import UNHEALTHY_CODES, BreakerBoard
from mcp_server.protocols.call_streams import UseExecute
from mcp_server.protocols.capacity import Resources, least_loaded, limits
from mcp_server.protocols.channels import ChannelPool
from mcp_server.protocols.registry import ProtocolDirectory
from mcp_server.protocols.retry_info import retry_after, status_in, usage_of
from mcp_server.telemetry.tracing import TaskTracer, finish_call


class GrpcProtocolCaller:
    """Calls registered plugin instances over gRPC."""

    def __init__(
        self,
        directory: ProtocolDirectory,
        channels: ChannelPool,
        breakers: BreakerBoard,
        admission: Admission,
        concurrency_overrides: dict[str, int] | None = None,
        tracer: TaskTracer | None = None,
    ) -> None:
        self.tracer = tracer
        self.directory = directory
        self.channels = channels
        self.breakers = breakers
        self.admission = admission
        self.concurrency_overrides = dict(concurrency_overrides or {})
        self._bulkheads: dict[str, asyncio.Semaphore] = {}
        self._needs: dict[str, tuple[protocol_pb2.ProtocolManifest, Resources]] = {}
        self._turn = 0

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
        instances = await self._instances(protocol)
        manifest = instances[0].manifest
        request = protocol_pb2.ExecuteRequest(
            protocol=protocol, input=input_data.struct(), context=execution_context(context, timeout)
        )
        metadata: Sequence[tuple[str, str]] = ()
        span = None
        if self.tracer is not None:
            span, metadata = self.tracer.start_call(context.task_id, context.step_path, protocol)
        grant: Grant | None = None
        address = ""
        try:
            address, grant = await self._place(protocol, manifest, instances, context.priority, observer)
            bulkhead = self._bulkhead(protocol, self.concurrency_overrides.get(protocol, manifest.max_concurrency))
            if bulkhead is None:
                result = await self._guarded(
                    protocol, address, request, timeout, stream, observer, metadata, idle_timeout
                )
            else:
                async with bulkhead:
                    result = await self._guarded(
                        protocol, address, request, timeout, stream, observer, metadata, idle_timeout
                    )
        except BaseException as exc:
            if span is not None:
                finish_call(span, exc)
            raise
        finally:
            if address:
                self.directory.calls_in_flight[address] -= 1
            if grant is not None:
                self.admission.release(grant)
        if span is not None:
            finish_call(span)
        return result

    async def _instances(self, protocol: str) -> list[registry_pb2.RegisteredProtocol]:
        instances = self.directory.instances(protocol)
        if not instances:
            await self.directory.refresh(force=True)
            instances = self.directory.instances(protocol)
        if not instances:
            raise ProtocolCallError("UNAVAILABLE", f"no plugin is registered for protocol {protocol!r}")
        return instances

    async def _place(
        self,
        protocol: str,
        manifest: protocol_pb2.ProtocolManifest,
        instances: list[registry_pb2.RegisteredProtocol],
        priority: int,
        observer: CallObserver | None,
    ) -> tuple[str, Grant | None]:
        """The instance this call goes to (and its capacity grant, when it needs one). While
        every instance asked for a pause (RetryInfo), the call waits for the first to end."""
        addresses = [i.address for i in instances]
        while (resume := self.directory.outliers.paused_until(addresses)) is not None:
            if observer is not None:
                observer.waiting(protocol, "calls again", f"every instance asked for a pause ({resume:.3f}s more)")
            await asyncio.sleep(resume)
        usable = self.directory.outliers.usable(addresses)
        needs = self._needs_of(manifest)
        grant = None
        capacities = (
            {i.address: Resources.of_capacity(i.capacity) for i in instances if i.address in usable} if needs else {}
        )
        if needs and any(limits(c, needs) for c in capacities.values()):
            grant = await self.admission.acquire(protocol, needs, capacities, priority, observer)
            address = grant.address
        else:
            self._turn += 1
            address = least_loaded(usable, self.directory.calls_in_flight, self._turn)
        self.directory.calls_in_flight[address] = self.directory.calls_in_flight.get(address, 0) + 1
        return address, grant

    def _needs_of(self, manifest: protocol_pb2.ProtocolManifest) -> Resources:
        """What one call of `manifest`'s protocol needs (read once per manifest the directory holds)."""
        cached = self._needs.get(manifest.name)
        if cached is None or cached[0] is not manifest:
            cached = self._needs[manifest.name] = (manifest, Resources.needs_of(manifest.resources))
        return cached[1]

    def _bulkhead(self, protocol: str, limit: int) -> asyncio.Semaphore | None:
        if limit <= 0:
            return None
        semaphore = self._bulkheads.get(protocol)
        if semaphore is None:
            semaphore = self._bulkheads[protocol] = asyncio.Semaphore(limit)
        return semaphore

    async def _guarded(
        self,
        protocol: str,
        address: str,
        request: protocol_pb2.ExecuteRequest,
        timeout: float | None,
        stream: bool,
        observer: CallObserver | None,
        metadata: Sequence[tuple[str, str]],
        idle_timeout: float | None = None,
    ) -> CallResult:
        breaker = self.breakers.get(protocol)
        before = str(breaker.current_state)
        try:
            if before == pybreaker.STATE_CLOSED and breaker.fail_counter == 0:
                # The common case: a success would change nothing in the breaker, so only a
                # failure goes through it (it counts, or resets the count, exactly as below).
                try:
                    response = await self._invoke(
                        address, request, timeout, observer if stream else None, metadata, idle_timeout
                    )
                except ProtocolCallError as exc:
                    self._judge_failure(protocol, address, exc)
                    with breaker.calling():
                        raise
            else:
                with breaker.calling():
                    try:
                        response = await self._invoke(
                            address, request, timeout, observer if stream else None, metadata, idle_timeout
                        )
                    except ProtocolCallError as exc:
                        self._judge_failure(protocol, address, exc)
                        raise
        except pybreaker.CircuitBreakerError:
            self._report_breaker(protocol, before, observer)
            raise ProtocolCallError(
                "UNAVAILABLE", f"the circuit breaker of {protocol} is open", breaker_open=True
            ) from None
        except ProtocolCallError:
            self._report_breaker(protocol, before, observer)
            raise
        self.directory.record_health(address, True)
        self._report_breaker(protocol, before, observer)
        directive = response.directive if response.HasField("directive") else None
        return CallResult(Payload.of_struct(response.output), directive, response.usage)

    def _judge_failure(self, protocol: str, address: str, exc: ProtocolCallError) -> None:
        """Note a failed call against its instance (a pause it asked for, its health), and mark
        whether it says anything about the protocol as a whole (see the module's docstring)."""
        if exc.retry_after is not None:  # the plugin (its provider) asked for a pause
            self.directory.outliers.pause(address, exc.retry_after)
            # the step waits for it (a timer of its run) only while no instance takes calls sooner
            addresses = [i.address for i in self.directory.instances(protocol)]
            exc.protocol_paused_for = self.directory.outliers.paused_until(addresses)
        unhealthy = exc.code in UNHEALTHY_CODES
        self.directory.record_health(address, not unhealthy)
        # One instance failing while others serve is that instance's outlier record (it is
        # ejected after repeated failures), not a failure of the protocol.
        others = [i.address for i in self.directory.instances(protocol) if i.address != address]
        exc.instance_only = unhealthy and bool(self.directory.outliers.serving(others))

    def _report_breaker(self, protocol: str, before: str, observer: CallObserver | None) -> None:
        after = self.breakers.state_name(protocol)
        if after != before and observer is not None:
            observer.breaker_changed(protocol, before, after)

    async def _invoke(
        self,
        address: str,
        request: protocol_pb2.ExecuteRequest,
        timeout: float | None,
        observer: CallObserver | None,
        metadata: Sequence[tuple[str, str]] = (),
        idle_timeout: float | None = None,
    ) -> protocol_pb2.ExecuteResponse:
        stub = self.channels.stub(address)
        try:
            if observer is None:
                if self.channels.streams.serves(address):
                    try:
                        return await self.channels.streams.execute(address, request, timeout, dict(metadata))
                    except UseExecute:
                        pass  # this instance does not serve ExecuteMany: the same call as Execute
                response = await stub.Execute(request, timeout=timeout, metadata=tuple(metadata) or None)
                if response is None:  # grpc hands back None when the bytes do not parse
                    raise ProtocolCallError(
                        "INTERNAL", f"the response of {address} is not a valid ExecuteResponse (it does not parse)"
                    )
                return cast(protocol_pb2.ExecuteResponse, response)
            call = stub.ExecuteStream(request, timeout=timeout, metadata=tuple(metadata) or None)
            async for message in _within(call, idle_timeout, address):
                if message is None:
                    raise ProtocolCallError(
                        "INTERNAL", f"the stream of {address} sent a message that is not an ExecuteStreamResponse"
                    )
                if message.HasField("progress"):
                    await observer.progress(message.progress)
                elif message.HasField("result"):
                    return cast(protocol_pb2.ExecuteResponse, message.result)
        except grpc.aio.AioRpcError as exc:
            raise _call_error(exc, address, timeout) from None
        raise ProtocolCallError("INTERNAL", f"the stream of {address} ended without a result")


async def _within(call: Any, idle_timeout: float | None, address: str) -> AsyncIterator[Any]:
    """The messages of a streaming call, each within `idle_timeout` of the one before (or of the
    start); past it the call is cancelled (the plugin sees it) and fails DEADLINE_EXCEEDED."""
    if idle_timeout is None:
        async for message in call:
            yield message
        return
    messages = call.__aiter__()
    while True:
        try:
            async with asyncio.timeout(idle_timeout):
                message = await anext(messages)
        except StopAsyncIteration:
            return
        except TimeoutError:
            call.cancel()
            raise ProtocolCallError(
                "DEADLINE_EXCEEDED", f"instance {address} sent nothing for {idle_timeout:g}s (the step's idle_timeout)"
            ) from None
        yield message


def _call_error(exc: grpc.aio.AioRpcError, address: str, timeout: float | None) -> ProtocolCallError:
    details: Any = exc.details() or ""
    if exc.code() == grpc.StatusCode.INTERNAL and "pars" in details.lower():
        details = f"the plugin's response is not a valid ExecuteResponse ({details})"
    elif exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED and timeout is not None:
        details = f"the attempt deadline of {timeout:g}s ran out ({details})"
    elif exc.code() == grpc.StatusCode.UNAVAILABLE:
        details = f"instance {address}: {details}"
    error = ProtocolCallError.from_plugin(exc.code().name, details, address)
    status = status_in(exc.trailing_metadata())
    if status is not None:
        error.retry_after = retry_after(status)
        error.usage = usage_of(status)
    return error


def execution_context(context: CallContext, timeout: float | None) -> protocol_pb2.ExecutionContext:
    """The ExecutionContext a plugin receives with a call: where it comes from and its deadline."""
    message = protocol_pb2.ExecutionContext(
        task_id=context.task_id,
        step_path=context.step_path,
        attempt=context.attempt,
        idempotency_key=context.idempotency_key,
        workflow_id=context.workflow_id,
        workflow_version=context.workflow_version,
    )
    if timeout is not None:
        message.deadline.FromNanoseconds(time.time_ns() + int(timeout * 1e9))
    return message
