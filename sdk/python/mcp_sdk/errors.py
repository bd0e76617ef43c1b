"""The one error a client sees: what the server said, read from its `google.rpc.Status`.

Every failed call raises McpError with the gRPC status code, the message, the ErrorInfo reason
(`WORKFLOW_NOT_FOUND`, `REQUEST_ID_REUSED`, ...), for bad input each field violation, and for a
rate limit when to try again (`retry_after`, seconds, from its RetryInfo). A
task that ends badly raises one of its two subclasses from `Client.result`: TaskFailed (with
the task's error code and message) or TaskCancelled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Self

import grpc
from google.protobuf.message import DecodeError
from google.rpc import code_pb2, error_details_pb2, status_pb2

if TYPE_CHECKING:
    from mcp_sdk.proto import task_pb2

STATUS_DETAILS_KEY = "grpc-status-details-bin"
_CODES_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request: which one (a dotted path) and why."""

    field: str
    description: str


class McpError(Exception):
    """A call the server refused or could not do, or a task that did not complete."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str = "",
        domain: str = "",
        violations: tuple[FieldViolation, ...] = (),
        metadata: dict[str, str] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or code.name
        self.domain = domain
        self.violations = tuple(violations)
        self.metadata = dict(metadata or {})
        self.retry_after = retry_after

    def __str__(self) -> str:
        lines = [f"{self.code.name} ({self.reason}): {self.message}"]
        lines += [f"  {v.field}: {v.description}" for v in self.violations]
        return "\n".join(lines)

    @classmethod
    def from_status(cls, status: status_pb2.Status) -> Self:
        """The error a `google.rpc.Status` describes (its ErrorInfo, BadRequest and RetryInfo details)."""
        reason, domain, metadata = "", "", {}
        violations: list[FieldViolation] = []
        retry_after: float | None = None
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason, domain, metadata = info.reason, info.domain, dict(info.metadata)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                violations += [FieldViolation(v.field, v.description) for v in bad.field_violations]
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                retry_after = retry.retry_delay.ToNanoseconds() / 1e9
        code = _CODES_BY_NUMBER.get(status.code, grpc.StatusCode.UNKNOWN)
        return cls(
            code,
            status.message,
            reason=reason,
            domain=domain,
            violations=tuple(violations),
            metadata=metadata,
            retry_after=retry_after,
        )

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> Self:
        """The error behind a failed gRPC call, with the details from its trailers when it has them."""
        code: grpc.StatusCode = error.code()
        message: str = error.details() or ""
        for key, value in error.trailing_metadata() or ():
            if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
                try:
                    status = status_pb2.Status.FromString(value)
                except DecodeError:  # a trailer we cannot read leaves the code and message
                    break
                return cls.from_status(status_pb2.Status(code=code.value[0], message=message, details=status.details))
        return cls(code, message)


class TaskFailed(McpError):
    """The task failed: `code`, `message` and `reason` are those of the task's error."""

    task: task_pb2.Task | None = None

    @property
    def task_id(self) -> str:
        return self.task.task_id if self.task is not None else ""


class TaskCancelled(McpError):
    """The task was cancelled; `message` is the reason given."""

    task: task_pb2.Task | None = None

    @property
    def task_id(self) -> str:
        return self.task.task_id if self.task is not None else ""


def task_error(task: task_pb2.Task) -> McpError:
    """The error of a task that ended FAILED or CANCELLED."""
    from mcp_sdk.proto import task_pb2

    if task.status == task_pb2.TASK_STATUS_CANCELLED:
        status = (
            task.error if task.HasField("error") else status_pb2.Status(code=code_pb2.CANCELLED, message="cancelled")
        )
        cancelled = TaskCancelled.from_status(status)
        cancelled.task = task
        return cancelled
    status = (
        task.error
        if task.HasField("error")
        else status_pb2.Status(code=code_pb2.UNKNOWN, message="the task failed without an error")
    )
    failed = TaskFailed.from_status(status)
    failed.task = task
    return failed
