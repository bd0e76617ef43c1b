"""A plugin's google.rpc.RetryInfo: how long it asked the orchestrator to send it no call (a
provider's 429 with Retry-After, passed on), read from the status it answered with."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

STATUS_DETAILS = "grpc-status-details-bin"


def retry_after(status: status_pb2.Status) -> float | None:
    """The delay of the status's RetryInfo detail, in seconds (None without one)."""
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return max(0.0, float(info.retry_delay.ToNanoseconds()) / 1e9)
    return None


def retry_after_in(trailing_metadata: Sequence[tuple[str, Any]] | None) -> float | None:
    """The same, from a failed call's trailing metadata."""
    for key, value in trailing_metadata or ():
        if key == STATUS_DETAILS:
            try:
                return retry_after(status_pb2.Status.FromString(value))
            except DecodeError:
                return None
    return None
