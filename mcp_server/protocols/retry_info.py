"""What a plugin's failed answer says beside its code, read from the google.rpc.Status it
answered with: a RetryInfo (how long it asked the orchestrator to send it no call: a provider's
429 with Retry-After, passed on), and what the call used (an ExecuteResponse with its usage)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

from mcp_sdk.proto import protocol_pb2

STATUS_DETAILS = "grpc-status-details-bin"


def retry_after(status: status_pb2.Status) -> float | None:
    """The delay of the status's RetryInfo detail, in seconds (None without one)."""
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return max(0.0, float(info.retry_delay.ToNanoseconds()) / 1e9)
    return None


def usage_of(status: status_pb2.Status) -> dict[str, float]:
    """What a failed call used: the usage of an ExecuteResponse among the status's details."""
    for detail in status.details:
        if detail.Is(protocol_pb2.ExecuteResponse.DESCRIPTOR):
            response = protocol_pb2.ExecuteResponse()
            detail.Unpack(response)
            return dict(response.usage)
    return {}


def status_in(trailing_metadata: Sequence[tuple[str, Any]] | None) -> status_pb2.Status | None:
    """The google.rpc.Status a failed call's trailing metadata carries, if any."""
    for key, value in trailing_metadata or ():
        if key == STATUS_DETAILS:
            try:
                return status_pb2.Status.FromString(value)
            except DecodeError:
                return None
    return None
