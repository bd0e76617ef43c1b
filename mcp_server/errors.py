"""The one exception hierarchy of the server.

Each class knows the gRPC status code it means to a caller; `api/interceptor.py` turns them into
`google.rpc.Status` replies in one place. The engine and the stores raise these and nothing
else crosses a layer boundary.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from grpc import StatusCode

from mcp_sdk.errors import FieldViolation as FieldViolation  # one type for a bad field, both sides of the wire


class McpError(Exception):
    """Base of every error the server reports to a caller."""

    code: StatusCode = StatusCode.INTERNAL
    reason: str = "INTERNAL"

    def __init__(
        self,
        message: str,
        *,
        violations: list[FieldViolation] | None = None,
        reason: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.violations: list[FieldViolation] = list(violations or [])
        if reason:
            self.reason = reason
        self.metadata: dict[str, str] = dict(metadata or {})


class InvalidArgument(McpError):
    """The request is malformed; `violations` names each bad field."""

    code = StatusCode.INVALID_ARGUMENT
    reason = "INVALID_ARGUMENT"


class NotFound(McpError):
    code = StatusCode.NOT_FOUND
    reason = "NOT_FOUND"


def task_not_found(task_id: str) -> NotFound:
    """What every RPC answers for a task that does not exist (or that the caller may not see)."""
    return NotFound(f"task {task_id!r} not found", reason="TASK_NOT_FOUND", metadata={"task_id": task_id})


class AlreadyExists(McpError):
    code = StatusCode.ALREADY_EXISTS
    reason = "ALREADY_EXISTS"


class FailedPrecondition(McpError):
    """The request is well formed but the system is not in a state to do it."""

    code = StatusCode.FAILED_PRECONDITION
    reason = "FAILED_PRECONDITION"


class Unauthenticated(McpError):
    """No credentials, or credentials that name no principal."""

    code = StatusCode.UNAUTHENTICATED
    reason = "UNAUTHENTICATED"


class PermissionDenied(McpError):
    """The caller is known but lacks the role the call needs."""

    code = StatusCode.PERMISSION_DENIED
    reason = "PERMISSION_DENIED"


class ResourceExhausted(McpError):
    """A limit was reached: a size, a queue, a rate."""

    code = StatusCode.RESOURCE_EXHAUSTED
    reason = "RESOURCE_EXHAUSTED"


class Unavailable(McpError):
    """A dependency (the store, a plugin) cannot be reached right now; retrying may help."""

    code = StatusCode.UNAVAILABLE
    reason = "UNAVAILABLE"


class StoreFull(Unavailable):
    """The store refuses writes for want of room: Redis at `maxmemory` with a policy that evicts
    nothing, a disk with no space left. Nothing of the refused write was kept. An Unavailable to
    the engine, so whatever waits out an unreachable store waits this out too; to a caller,
    RESOURCE_EXHAUSTED (the code gRPC names for "out of space"), so that clients do not retry
    it blindly at once."""

    code = StatusCode.RESOURCE_EXHAUSTED
    reason = "STORE_FULL"


class DeadlineExceeded(McpError):
    code = StatusCode.DEADLINE_EXCEEDED
    reason = "DEADLINE_EXCEEDED"


class Cancelled(McpError):
    code = StatusCode.CANCELLED
    reason = "CANCELLED"


class LeaseLost(McpError):
    """This replica no longer owns the task: another one took it over."""

    code = StatusCode.ABORTED
    reason = "LEASE_LOST"


class CancelRequested(McpError):
    """A run's last write would have completed its task after a cancel request for it was
    stored: the store wrote nothing, and the run ends CANCELLED instead (`message`: the
    request's reason)."""

    code = StatusCode.ABORTED
    reason = "CANCEL_REQUESTED"


class StartupError(RuntimeError):
    """The server cannot start (a store it cannot open, an address it cannot listen on); the
    message says why in one line, which is all `mcp-server` prints."""


@dataclass
class ViolationCollector:
    """Accumulates field violations so validation reports every problem at once."""

    violations: list[FieldViolation] = field(default_factory=list)

    def add(self, field_path: str, description: str) -> None:
        self.violations.append(FieldViolation(field_path, description))

    def raise_if_any(self, message: str) -> None:
        if self.violations:
            first = self.violations[0]
            detail = f"{message}: {first.field}: {first.description}"
            if len(self.violations) > 1:
                detail += f" (and {len(self.violations) - 1} more)"
            raise InvalidArgument(detail, violations=self.violations)


def bulk_actions_running(owner: str, max_running: int) -> ResourceExhausted:
    """The answer to a StartBulkAction past the owner's number of running actions."""
    return ResourceExhausted(
        f"{owner or 'this principal'} has {max_running} bulk action(s) running, the most allowed at once"
        " (MCP_BULK_MAX_RUNNING): wait for one to end, or abort one",
        reason="BULK_ACTIONS_RUNNING",
        metadata={"max_running": str(max_running)},
    )
