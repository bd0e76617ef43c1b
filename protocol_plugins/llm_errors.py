"""Provider errors mapped once, to the gRPC status the engine retries (or not) by: a 429 is
RESOURCE_EXHAUSTED with the provider's Retry-After as a RetryInfo (the orchestrator pauses the
instance for it); 408, 409, 5xx and connection errors are UNAVAILABLE; a timeout is
DEADLINE_EXCEEDED; 400, 404, 422 and a context too long are INVALID_ARGUMENT (not retried);
401 and 403 are UNAUTHENTICATED and PERMISSION_DENIED."""

from __future__ import annotations

import grpc
import openai

from mcp_sdk.plugin import ProtocolError

S = grpc.StatusCode


def retry_after(headers: object) -> float | None:
    """Seconds from `retry-after-ms` or `retry-after` (seconds; an HTTP date is not honoured)."""
    get = getattr(headers, "get", None)
    if get is None:
        return None
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = get(name)
        if value:
            try:
                return max(0.0, float(value) * scale)
            except ValueError:
                continue
    return None


def provider_error(exc: Exception) -> ProtocolError:
    """The ProtocolError a provider's error answers with."""
    if isinstance(exc, openai.APITimeoutError):
        return ProtocolError(S.DEADLINE_EXCEEDED, f"the model server did not answer in time: {exc}")
    if isinstance(exc, openai.APIConnectionError):
        return ProtocolError(S.UNAVAILABLE, f"cannot reach the model server: {exc}")
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        message = f"the model server answered {status}: {_detail(exc)}"
        if status == 429:
            return ProtocolError(S.RESOURCE_EXHAUSTED, message, retry_after=retry_after(exc.response.headers))
        if status in (408, 409) or status >= 500:
            return ProtocolError(S.UNAVAILABLE, message)
        if status == 401:
            return ProtocolError(S.UNAUTHENTICATED, message)
        if status == 403:
            return ProtocolError(S.PERMISSION_DENIED, message)
        return ProtocolError(S.INVALID_ARGUMENT, message)
    return ProtocolError(S.UNAVAILABLE, f"the model call failed: {exc}")


def _detail(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])[:500]
    return str(exc.message)[:500]
