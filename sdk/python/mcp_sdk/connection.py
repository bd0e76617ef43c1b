"""How a client reaches an orchestrator: the channel (TLS, keepalive, gRPC's own retries of calls
that are safe to repeat), the token, and the backoff of calls that reconnect by themselves.
`Connection` is what every group of client methods shares."""

from __future__ import annotations

import asyncio
import copy
import json
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import grpc

from mcp_sdk.errors import McpError
from mcp_sdk.proto import (
    bulk_pb2_grpc,
    events_pb2_grpc,
    registry_pb2_grpc,
    schedule_pb2_grpc,
    task_pb2_grpc,
    workflow_pb2_grpc,
)

# A watch that ends with one of these was cut off (server gone, restarting, overloaded), not refused.
RESUMABLE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
# Calls gRPC may repeat on UNAVAILABLE, and on a CANCELLED this client did not ask for (gRPC never
# retries a call its caller cancelled): a server's gRPC core sheds calls past its pending-call
# limit with that status. Left out: CreateWorkflow (a repeat would add a version) and
# DeleteWorkflow (a repeat would answer NOT_FOUND for a delete that worked). gRPC allows at most 5
# attempts, so the waits between them widen fast (up to 0.2, 0.6, 1.8, 5 s, at random below
# each): calls shed together come back spread out. With 0.1 s growing twofold, half the runs of a
# 3,000-call burst against a server shedding past 400 lost a call after five attempts.
_RETRYABLE_METHODS = [
    {"service": "mcp.v1.TaskService"},
    {"service": "mcp.v1.WorkflowService", "method": "GetWorkflow"},
    {"service": "mcp.v1.WorkflowService", "method": "ListWorkflows"},
    {"service": "mcp.v1.WorkflowService", "method": "ValidateWorkflow"},
    {"service": "mcp.v1.ProtocolRegistry"},
]
_SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": _RETRYABLE_METHODS,
                "retryPolicy": {
                    "maxAttempts": 5,
                    "initialBackoff": "0.2s",
                    "maxBackoff": "5s",
                    "backoffMultiplier": 3,
                    "retryableStatusCodes": ["UNAVAILABLE", "CANCELLED"],
                },
            }
        ]
    }
)
_CHANNEL_OPTIONS = [
    ("grpc.service_config", _SERVICE_CONFIG),
    ("grpc.enable_retries", 1),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    # Notice a server that vanished without closing the connection (a cut network) within ~40 s:
    # a ping after 30 s of quiet, and any ping unanswered for 10 s closes the connection (without
    # ping_timeout an unanswered ping already in flight holds the keepalive back for a minute).
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.ping_timeout_ms", 10_000),
]


@dataclass(frozen=True)
class Tls:
    """How to reach the server over TLS: the CA to trust (None: the system's), and for mutual TLS
    this client's certificate chain and key, all PEM; `server_name` overrides the name checked."""

    root_certificates: bytes | None = None
    certificate_chain: bytes | None = None
    private_key: bytes | None = None
    server_name: str | None = None

    @classmethod
    def from_files(
        cls,
        ca: str | Path | None = None,
        cert: str | Path | None = None,
        key: str | Path | None = None,
        server_name: str | None = None,
    ) -> Tls:
        """Read the PEM files; each is optional, as in the constructor."""

        def read(path: str | Path | None) -> bytes | None:
            return Path(path).read_bytes() if path else None

        return cls(read(ca), read(cert), read(key), server_name)


def open_channel(
    address: str, tls: Tls | bool | None = None, options: list[tuple[str, Any]] | None = None
) -> grpc.aio.Channel:
    """A channel to `address` with the client's retry and keepalive settings, over TLS when asked."""
    channel_options = [*_CHANNEL_OPTIONS, *(options or [])]
    if tls is None or tls is False:
        return grpc.aio.insecure_channel(address, options=channel_options)
    config = Tls() if tls is True else tls
    if config.server_name:
        channel_options.append(("grpc.ssl_target_name_override", config.server_name))
    credentials = grpc.ssl_channel_credentials(config.root_certificates, config.private_key, config.certificate_chain)
    return grpc.aio.secure_channel(address, credentials, options=channel_options)


def bearer_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """The call metadata that carries a token, or none; ValueError for a token no call could
    carry (gRPC sends printable ASCII in metadata, and fails the call before it leaves otherwise)."""
    if token and not (token.isascii() and token.isprintable()):
        raise ValueError("a token is printable ASCII: no control characters, no characters past '~'")
    return (("authorization", f"Bearer {token}"),) if token else ()


class Backoff:
    """Exponential backoff with full jitter, and a budget of time spent failing in a row."""

    def __init__(self, initial: float = 0.1, maximum: float = 5.0, give_up_after: float | None = 300.0) -> None:
        self.initial, self.maximum, self.give_up_after = initial, maximum, give_up_after
        self._attempt = 0
        self._failing_since: float | None = None

    def reset(self) -> None:
        self._attempt = 0
        self._failing_since = None

    def exhausted(self) -> bool:
        """Record a failure; True once failures have gone on longer than the budget."""
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        return self.give_up_after is not None and now - self._failing_since > self.give_up_after

    def can_wait(self, seconds: float) -> bool:
        """Whether waiting `seconds` more stays within the budget of time spent failing in a row."""
        if self.give_up_after is None or self._failing_since is None:
            return True
        return time.monotonic() + seconds - self._failing_since <= self.give_up_after

    async def sleep(self, retry_after: float | None = None) -> None:
        """Wait before the next try: as long as the server said (`retry_after`, a refusal's
        RetryInfo), else the next exponential step."""
        if retry_after is not None:
            await asyncio.sleep(spread(retry_after))
            return
        delay = min(self.maximum, self.initial * 2**self._attempt)
        self._attempt += 1
        await asyncio.sleep(random.uniform(delay / 2, delay))


def spread(retry_after: float) -> float:
    """A server's retry time with a little added at random (up to a tenth, at most a second), so
    that clients refused together do not all come back at the same instant."""
    return retry_after + random.uniform(0, min(1.0, retry_after / 10))


class Connection:
    """An async connection to one orchestrator; use it as an async context manager, or close() it.

    `timeout` bounds each unary call (seconds); `watch_give_up_after` is how long a watch keeps
    reconnecting to a server that does not answer before it raises (None: forever);
    `rate_limited_wait` is how long `submit` and `rerun` wait out refusals past a submission rate
    limit (RESOURCE_EXHAUSTED with a retry time) before they raise (0: at once)."""

    def __init__(
        self,
        address: str,
        *,
        token: str | None = None,
        tls: Tls | bool | None = None,
        timeout: float = 30.0,
        watch_give_up_after: float | None = 300.0,
        rate_limited_wait: float = 0.0,
        channel_options: list[tuple[str, Any]] | None = None,
    ) -> None:
        if not rate_limited_wait >= 0:
            raise ValueError("rate_limited_wait is 0 or more seconds")
        self.address = address
        self.timeout = timeout
        self.watch_give_up_after = watch_give_up_after
        self.rate_limited_wait = rate_limited_wait
        self._metadata = bearer_metadata(token)
        self._owns_channel = True
        self.channel = open_channel(address, tls, channel_options)
        self.tasks = task_pb2_grpc.TaskServiceStub(self.channel)
        self.workflows = workflow_pb2_grpc.WorkflowServiceStub(self.channel)
        self.registry = registry_pb2_grpc.ProtocolRegistryStub(self.channel)
        self.schedules = schedule_pb2_grpc.ScheduleServiceStub(self.channel)
        self.bulk_actions = bulk_pb2_grpc.BulkActionServiceStub(self.channel)
        self.events = events_pb2_grpc.EventServiceStub(self.channel)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection (a client from `with_token` leaves its parent's open)."""
        if self._owns_channel:
            await self.channel.close()

    def with_token(self, token: str | None) -> Self:
        """A client on this one's connection that calls as another principal: for a gateway or a
        console that serves many users over one channel."""
        other = copy.copy(self)
        other._metadata = bearer_metadata(token)
        other._owns_channel = False
        return other

    async def _call(self, method: Callable[..., Awaitable[Any]], request: Any) -> Any:
        """A unary call with the token and timeout; failures as McpError. (The stubs are untyped:
        each caller names the response type it gets.)"""
        try:
            return await method(request, metadata=self._metadata, timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            raise McpError.from_rpc_error(exc) from None

    async def _submission(self, method: Callable[..., Awaitable[Any]], request: Any) -> Any:
        """A unary call that submits (its request id makes a repeat harmless), asked again while
        the server refuses it with a retry time that ends within `rate_limited_wait`."""
        until = time.monotonic() + self.rate_limited_wait
        while True:
            try:
                return await self._call(method, request)
            except McpError as exc:
                wait = exc.retry_after
                if exc.code != grpc.StatusCode.RESOURCE_EXHAUSTED or wait is None or time.monotonic() + wait > until:
                    raise
                await asyncio.sleep(min(spread(wait), max(until - time.monotonic(), wait)))

    async def _pages(self, method: Callable[..., Awaitable[Any]], request: Any) -> AsyncIterator[Any]:
        """Each response of a paged List call, following next_page_token to the end."""
        while True:
            reply = await self._call(method, request)
            yield reply
            if not reply.next_page_token:
                return
            request.page_token = reply.next_page_token
