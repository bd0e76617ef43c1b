"""Serving ExecuteMany: the calls of one stream, each run as its own task, their outcomes sent
back as many per message as fit in what the orchestrator accepts."""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
from google.rpc import status_pb2

from mcp_sdk.handlers import Context, ProtocolError
from mcp_sdk.proto import protocol_pb2

log = logging.getLogger(__name__)
Answer = Callable[[protocol_pb2.ExecuteRequest, Context], Awaitable[protocol_pb2.ExecuteResponse]]
"""How the plugin answers one request (raising ProtocolError with the status it ends with)."""


class CallStream:
    """The calls of one ExecuteMany stream: each runs as a task; outcomes wait in `ready` until
    the stream sends them, as many per message as fit in what the orchestrator accepts."""

    def __init__(self, answer: Answer, context: grpc.aio.ServicerContext) -> None:
        self.answer = answer
        self.context = context
        self.running: dict[int, asyncio.Task[None]] = {}
        self.ready: collections.deque[protocol_pb2.ExecuteOutcome] = collections.deque()
        self.wake = asyncio.Event()
        self.max_response_bytes = 4 * 1024 * 1024

    async def __aenter__(self) -> CallStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self.running.values():  # the orchestrator went away: nobody waits for these
            task.cancel()
        self.running.clear()

    async def read(self, requests: AsyncIterator[protocol_pb2.ExecuteManyRequest]) -> None:
        async for message in requests:
            if message.max_response_bytes:
                self.max_response_bytes = message.max_response_bytes
            for call in message.calls:
                if call.id not in self.running:
                    self.running[call.id] = asyncio.ensure_future(self._run(call))
            for call_id in message.cancel:
                task = self.running.pop(call_id, None)
                if task is not None:
                    task.cancel()
        self.wake.set()  # the orchestrator closed its side: finish with what is running

    async def _run(self, call: protocol_pb2.ExecuteCall) -> None:
        outcome = protocol_pb2.ExecuteOutcome(id=call.id)
        try:
            outcome.response.CopyFrom(
                await self.answer(call.request, Context(call.request, self.context, metadata=dict(call.metadata)))
            )
        except ProtocolError as exc:
            outcome.error.CopyFrom(exc.status())
        except Exception as exc:  # a handler's bug fails its call, as Execute answers UNKNOWN
            log.exception("protocol %s failed", call.request.protocol)
            outcome.error.code, outcome.error.message = grpc.StatusCode.UNKNOWN.value[0], f"{type(exc).__name__}: {exc}"
        if outcome.ByteSize() + 16 > self.max_response_bytes:
            outcome = protocol_pb2.ExecuteOutcome(
                id=call.id,
                error=status_pb2.Status(
                    code=grpc.StatusCode.RESOURCE_EXHAUSTED.value[0],
                    message=f"{call.request.protocol}: the output is {outcome.ByteSize()} bytes; "
                    f"the orchestrator accepts {self.max_response_bytes}",
                ),
            )
        if self.running.pop(call.id, None) is not None:  # not cancelled meanwhile
            self.ready.append(outcome)
            self.wake.set()

    async def outcomes(self, reader: asyncio.Future[None]) -> protocol_pb2.ExecuteManyResponse | None:
        """The next message to send; None once the orchestrator has closed its side and every call has answered."""
        while not self.ready:
            if reader.done() and not self.running:
                reader.result()  # a broken stream raises here
                return None
            self.wake.clear()
            await self.wake.wait()
        batch = protocol_pb2.ExecuteManyResponse()
        size = 0
        while self.ready and (not batch.outcomes or size + self.ready[0].ByteSize() + 16 <= self.max_response_bytes):
            outcome = self.ready.popleft()
            size += outcome.ByteSize() + 16
            batch.outcomes.append(outcome)
        return batch
