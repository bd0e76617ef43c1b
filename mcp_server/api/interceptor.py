"""The server's edge: who is calling, and the one place where errors become gRPC statuses.

Every call is authenticated first (when a principals file is configured; see auth.py) and
its principal made available to the servicers through `auth.current_principal`. An McpError
becomes its status code with `google.rpc.Status` details: BadRequest field violations for
bad input, ErrorInfo (reason, domain, metadata) always, and RetryInfo when the error says when to
try again (its metadata's `retry_after_seconds`: a rate limit). Anything else is a bug: it is
logged with its traceback and answered INTERNAL, never UNKNOWN.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2

from mcp_server.api.validation import validate_request
from mcp_server.auth import Authenticator, current_principal
from mcp_server.errors import InvalidArgument, McpError

log = logging.getLogger(__name__)
DOMAIN = "mcp.v1"
MAX_VIOLATIONS = 15


def to_status(error: McpError) -> status_pb2.Status:
    status = status_pb2.Status(code=error.code.value[0], message=error.message[:1000])
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=error.metadata))
    status.details.append(info)
    if (retry_after := error.metadata.get("retry_after_seconds")) is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(max(0, round(float(retry_after) * 1e9)))
        retry = any_pb2.Any()
        retry.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        status.details.append(retry)
    if error.violations:
        # The details travel in a trailer, and clients refuse trailers over 8 KB by default:
        # send the first violations, each cut to a readable length; the message counts the rest.
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=v.field[:200], description=v.description[:300])
                for v in error.violations[:MAX_VIOLATIONS]
            ]
        )
        detail = any_pb2.Any()
        detail.Pack(bad)
        status.details.append(detail)
    return status


async def _abort(context: grpc.aio.ServicerContext, error: BaseException) -> None:
    if isinstance(error, McpError):
        status = to_status(error)
        code = error.code
    else:
        log.exception("bug while serving a request", exc_info=error)
        status = status_pb2.Status(code=code_pb2.INTERNAL, message=f"internal error: {type(error).__name__}")
        code = grpc.StatusCode.INTERNAL
    await context.abort(
        code, status.message, trailing_metadata=(("grpc-status-details-bin", status.SerializeToString()),)
    )


class EdgeInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every handler: authenticate, run, answer errors with the right status and details."""

    def __init__(self, authenticator: Authenticator | None = None) -> None:
        self.authenticator = authenticator
        # The wrapped handler of each method served: the services are fixed once the server
        # starts, so a method's handler is built on its first call, not on every call.
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is not None:
            return wrapped
        handler = await continuation(handler_call_details)
        if handler is None:  # an unknown method: not kept, so a caller cannot grow the map
            return handler
        wrapped = self._wrapped[method] = self._wrap(method, handler)
        return wrapped

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        deserialize = _tolerant(handler.request_deserializer)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(method, handler.unary_unary), deserialize, handler.response_serializer
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(method, handler.unary_stream), deserialize, handler.response_serializer
            )
        return handler

    def _enter(self, method: str, request: Any, context: grpc.aio.ServicerContext) -> None:
        if isinstance(request, _Malformed):
            raise InvalidArgument(
                f"the request is not a valid {method.rsplit('/', 1)[-1]} message: {request.error}",
                reason="MALFORMED_REQUEST",
            )
        if self.authenticator is not None:
            metadata = {key: value for key, value in (context.invocation_metadata() or ()) if isinstance(value, str)}
            principal = self.authenticator.authenticate(method, metadata)
            if principal is not None:
                current_principal.set(principal)
        if isinstance(request, Message):
            validate_request(request)  # the rules declared in the protos, after authentication

    def _wrap_unary(
        self, method: str, behavior: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
    ) -> Callable[..., Awaitable[Any]]:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                self._enter(method, request, context)
                return await behavior(request, context)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await _abort(context, exc)

        return wrapped

    def _wrap_stream(
        self, method: str, behavior: Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]
    ) -> Callable[..., AsyncIterator[Any]]:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                self._enter(method, request, context)
                async for item in behavior(request, context):
                    yield item
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await _abort(context, exc)

        return wrapped


class _Malformed:
    """Stands for request bytes that did not parse, so the call can answer INVALID_ARGUMENT
    (gRPC itself would answer INTERNAL, as if the server were at fault)."""

    def __init__(self, error: Exception) -> None:
        self.error = f"{type(error).__name__}: {error}"


def _tolerant(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as exc:
            return _Malformed(exc)

    return parse
