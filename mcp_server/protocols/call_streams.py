"""Many plugin calls over one ExecuteMany stream per plugin instance (see protocol.proto).

A call in flight is an entry in a map instead of an HTTP/2 stream of its own (about 1 KB of
the orchestrator's memory against 19 KB), and the calls that start in one turn of the event
loop travel to the plugin in one message. Each call keeps Execute's meaning: its attempt
deadline is enforced here (and is in request.context.deadline for the plugin), a call the
orchestrator stops waiting for is cancelled on the plugin, and a stream that breaks fails the
calls in flight on it as a broken connection fails unary calls (UNAVAILABLE: the engine
retries them by policy); the next call opens a new stream.

A plugin that does not serve ExecuteMany (UNIMPLEMENTED) is called with Execute from then on,
the calls that were waiting on the stream included (they never reached a handler). So is one
whose stream fails in a way no single call can be blamed for (a message that does not parse
or is too large): with Execute, only the call concerned fails.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable, Mapping

import grpc

from mcp_sdk.proto import protocol_pb2
from mcp_server.engine.ports import ProtocolCallError
from mcp_server.protocols.retry_info import retry_after, usage_of

log = logging.getLogger(__name__)
METHOD = "/mcp.v1.ProtocolService/ExecuteMany"
ENVELOPE_BYTES = 64  # an ExecuteCall's id, tags and lengths, beyond its request and metadata
TRANSPORT_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})


class UseExecute(Exception):
    """This instance is called with Execute (it does not serve ExecuteMany, or its stream misbehaved)."""


class _Stream:
    """One ExecuteMany stream to one plugin instance, and the calls waiting on it."""

    def __init__(self, channel: grpc.aio.Channel, address: str, max_message_bytes: int) -> None:
        self.address = address
        self.max_message_bytes = max_message_bytes
        open_stream = channel.stream_stream(
            METHOD,
            request_serializer=protocol_pb2.ExecuteManyRequest.SerializeToString,
            response_deserializer=protocol_pb2.ExecuteManyResponse.FromString,
        )
        self.call = open_stream()
        self.pending: dict[int, asyncio.Future[protocol_pb2.ExecuteResponse]] = {}
        self.outbox: collections.deque[protocol_pb2.ExecuteCall] = (
            collections.deque()
        )  # thousands may queue in one turn
        self.cancels: list[int] = []
        self.last_id = 0
        self.answered = False  # the plugin has sent something: it serves ExecuteMany
        self.ended: str = ""  # why the stream ended ("" while it is open)
        self.use_execute = False  # from now on, call this instance with Execute
        self.write_failed = False
        self._writer: asyncio.Task[None] | None = None
        self._reader = asyncio.ensure_future(self._read())

    async def execute(
        self, request: protocol_pb2.ExecuteRequest, timeout: float | None, metadata: Mapping[str, str]
    ) -> protocol_pb2.ExecuteResponse:
        self.last_id += 1
        call_id = self.last_id
        future: asyncio.Future[protocol_pb2.ExecuteResponse] = asyncio.get_running_loop().create_future()
        self.pending[call_id] = future
        self.outbox.append(protocol_pb2.ExecuteCall(id=call_id, request=request, metadata=metadata))
        self._send_soon()
        try:
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            raise ProtocolCallError(
                "DEADLINE_EXCEEDED", f"the attempt deadline of {timeout:g}s ran out (Deadline Exceeded)"
            ) from None
        finally:
            if self.pending.pop(call_id, None) is not None and not self.ended:
                self.cancels.append(call_id)  # nobody waits for it any more: the plugin stops it
                self._send_soon()

    def _send_soon(self) -> None:
        """Send what is queued once the calls of this turn of the loop have queued theirs."""
        if self._writer is None or self._writer.done():
            self._writer = asyncio.ensure_future(self._write())

    async def _write(self) -> None:
        try:
            while (self.outbox or self.cancels) and not self.ended:
                message = protocol_pb2.ExecuteManyRequest(max_response_bytes=self.max_message_bytes)
                size = 0
                while self.outbox:
                    call = self.outbox[0]
                    if call.id not in self.pending:  # given up on before it was sent
                        self.outbox.popleft()
                        continue
                    call_size = call.ByteSize() + ENVELOPE_BYTES
                    if message.calls and size + call_size > self.max_message_bytes:
                        break
                    message.calls.append(self.outbox.popleft())
                    size += call_size
                message.cancel.extend(self.cancels)
                self.cancels.clear()
                if message.calls or message.cancel:
                    await self.call.write(message)
        except Exception as exc:  # the stream is gone: the reader ends it for every call
            log.debug("ExecuteMany to %s: write failed: %s", self.address, exc)
            self.write_failed = True
            if not self.call.done():
                self.call.cancel()

    async def _read(self) -> None:
        try:
            async for message in self.call:
                if message is None:  # grpc hands back None for bytes that do not parse
                    self._end(
                        f"instance {self.address}: the call stream broke: a message that is not an ExecuteManyResponse",
                        True,
                    )
                    log.warning(
                        "ExecuteMany to %s: a message that does not parse: calling it with Execute from now on",
                        self.address,
                    )
                    return
                self.answered = True
                for outcome in message.outcomes:
                    future = self.pending.pop(outcome.id, None)
                    if future is None or future.done():
                        continue  # given up on
                    if outcome.HasField("error"):
                        error = ProtocolCallError.from_plugin(
                            _code_name(outcome.error.code), outcome.error.message, self.address
                        )
                        error.retry_after = retry_after(outcome.error)
                        error.usage = usage_of(outcome.error)
                        future.set_exception(error)
                    else:
                        future.set_result(outcome.response)
            self._end("the plugin ended the stream", False)
            return
        except grpc.aio.AioRpcError as exc:
            if not self.answered and exc.code() == grpc.StatusCode.INTERNAL and self._writer is not None:
                await asyncio.wait([self._writer], timeout=1)  # did the first write fail? (see below)
            # A plugin without ExecuteMany answers UNIMPLEMENTED; when that answer beats the
            # first write, the write fails and gRPC reports INTERNAL instead (1 in ~200 here).
            # Either way no handler saw the calls.
            if not self.answered and (
                exc.code() == grpc.StatusCode.UNIMPLEMENTED
                or (exc.code() == grpc.StatusCode.INTERNAL and self.write_failed)
            ):
                self._end("the instance does not serve ExecuteMany", True, unary=True)
                return
            transport = exc.code() in TRANSPORT_CODES
            if not transport:
                log.warning(
                    "ExecuteMany to %s failed with %s (%s): calling it with Execute from now on",
                    self.address,
                    exc.code().name,
                    exc.details(),
                )
            # No call can be blamed for a broken stream: its calls fail as a broken connection
            # fails unary calls, UNAVAILABLE, which the engine retries by policy.
            self._end(
                f"instance {self.address}: the call stream broke: {exc.code().name}: {exc.details()}", not transport
            )
            return
        except asyncio.CancelledError:
            self._end("the call stream was closed", False)
            raise
        except Exception as error:  # a bug here must not strand the calls waiting on the stream
            log.exception("ExecuteMany to %s", self.address)
            self._end(f"instance {self.address}: the call stream failed: {error}", True)

    def _end(self, why: str, use_execute: bool, *, unary: bool = False) -> None:
        self.ended = why
        self.use_execute = use_execute
        for future in self.pending.values():
            if not future.done():
                future.set_exception(UseExecute(why) if unary else ProtocolCallError("UNAVAILABLE", why))
        self.pending.clear()
        self.outbox.clear()
        self.call.cancel()

    async def close(self) -> None:
        self._reader.cancel()
        for task in (self._reader, self._writer):
            if task is not None:
                await asyncio.gather(task, return_exceptions=True)


_CODE_NAMES = {code.value[0]: str(code.name) for code in grpc.StatusCode}


def _code_name(number: int) -> str:
    return _CODE_NAMES.get(number, "UNKNOWN")


class CallStreams:
    """The ExecuteMany stream of each plugin instance, opened on first use and again after it
    breaks; the instances called with Execute instead."""

    def __init__(
        self, channel_for: Callable[[str], grpc.aio.Channel], max_message_bytes: int, enabled: bool = True
    ) -> None:
        self._channel_for = channel_for
        self._max_message_bytes = max_message_bytes
        self._enabled = enabled
        self._streams: dict[str, _Stream] = {}
        self._use_execute: set[str] = set()

    def open_to(self) -> list[str]:
        """The addresses with an open stream."""
        return [address for address, stream in self._streams.items() if not stream.ended]

    def serves(self, address: str) -> bool:
        """Whether calls to `address` go over its stream."""
        return self._enabled and address not in self._use_execute

    async def execute(
        self, address: str, request: protocol_pb2.ExecuteRequest, timeout: float | None, metadata: Mapping[str, str]
    ) -> protocol_pb2.ExecuteResponse:
        """Execute `request` on `address` over its stream. Raises ProtocolCallError as a unary
        call would, or UseExecute: make this call (and the next ones) with Execute."""
        stream = self._streams.get(address)
        if stream is None or stream.ended:
            if stream is not None and stream.use_execute:
                self._use_execute.add(address)
                raise UseExecute(stream.ended)
            stream = self._streams[address] = _Stream(self._channel_for(address), address, self._max_message_bytes)
        try:
            return await stream.execute(request, timeout, metadata)
        except UseExecute:
            self._use_execute.add(address)
            raise

    async def discard(self, address: str) -> None:
        self._use_execute.discard(address)
        stream = self._streams.pop(address, None)
        if stream is not None:
            await stream.close()

    async def close(self) -> None:
        for address in list(self._streams):
            await self.discard(address)
