"""gRPC server options shared by the orchestrator and the plugins the SDK serves."""

from __future__ import annotations

# gRPC's C core sheds calls that it has received but the Python event loop has not taken up yet:
# past a soft limit (default 1,000) at random, past a hard limit (default 3,000) all of them, and
# the client sees a bare CANCELLED. A grpc.aio server takes up one call at a time between the
# tasks it runs, so a burst of 2,000 calls lost ~8% of them here (3,000: 13%).
DEFAULT_MAX_PENDING_CALLS = 20_000


def pending_call_options(limit: int = DEFAULT_MAX_PENDING_CALLS) -> list[tuple[str, int]]:
    """Server options that let `limit` received calls wait for the event loop before any is shed
    (all are shed only at twice that)."""
    if limit < 1:
        raise ValueError(f"the pending call limit must be at least 1, not {limit}")
    return [("grpc.server.max_pending_requests", limit), ("grpc.server.max_pending_requests_hard_limit", 2 * limit)]
