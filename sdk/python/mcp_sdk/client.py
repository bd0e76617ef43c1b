"""An async client of the orchestrator: workflows in, tasks out, events followed to the end.

    async with Client("127.0.0.1:50051", token="...") as client:
        await client.create_workflow(open("hello.yaml").read())
        task = await client.submit("hello", {"name": "Ada"})
        async for event in client.watch(task.task_id):
            print(event.sequence, TaskEventType.Name(event.type), event.step_path)
        print(await client.result(task.task_id))

Every failed call raises `McpError` (code, ErrorInfo reason, field violations). `watch` survives
dropped connections and server restarts: it reconnects with backoff and resumes after the last
sequence it delivered, so each event arrives once and in order. `result` returns the task's result
as plain Python values, or raises TaskFailed / TaskCancelled. Unary calls that are safe to repeat
are retried by gRPC on UNAVAILABLE; `submit` is made safe by a request id (one is generated when
none is given).
"""

from __future__ import annotations

from mcp_sdk.bulk import BulkMethods, CancelOutcome, RerunOutcome
from mcp_sdk.bulk_actions import BulkActionMethods, task_selection
from mcp_sdk.connection import RESUMABLE_CODES, Backoff, Connection, Tls, bearer_metadata, open_channel
from mcp_sdk.cursor import TERMINAL_EVENTS, TERMINAL_STATUSES, Cursor
from mcp_sdk.definitions import submit_request, workflow_from
from mcp_sdk.events import EventMethods
from mcp_sdk.proto import registry_pb2
from mcp_sdk.schedule_methods import ScheduleMethods
from mcp_sdk.workflow_methods import SubworkflowMove, Upgrade, WorkflowMethods

__all__ = [
    "RESUMABLE_CODES",
    "TERMINAL_EVENTS",
    "TERMINAL_STATUSES",
    "Backoff",
    "BulkActionMethods",
    "BulkMethods",
    "CancelOutcome",
    "Client",
    "Connection",
    "Cursor",
    "RerunOutcome",
    "SubworkflowMove",
    "Tls",
    "Upgrade",
    "WorkflowMethods",
    "bearer_metadata",
    "open_channel",
    "submit_request",
    "task_selection",
    "workflow_from",
]


class Client(BulkActionMethods, BulkMethods, EventMethods, ScheduleMethods, WorkflowMethods):
    """An async client of one orchestrator; use it as an async context manager, or close() it.

    `timeout` bounds each unary call (seconds); `watch_give_up_after` is how long a watch keeps
    reconnecting to a server that does not answer before it raises (None: forever). Task methods
    come from TaskMethods (task_methods.py), BulkMethods (bulk.py) and BulkActionMethods (bulk_actions.py),
    publish_event from EventMethods (events.py), schedule methods from ScheduleMethods
    (schedule_methods.py), workflow methods from WorkflowMethods (workflow_methods.py), the connection
    from Connection (connection.py)."""

    async def list_protocols(self) -> list[registry_pb2.RegisteredProtocol]:
        """Every registered protocol instance: address, health, breaker, capacity and what is in use."""
        return [
            p
            async for reply in self._pages(
                self.registry.ListProtocols, registry_pb2.ListProtocolsRequest(page_size=1000)
            )
            for p in reply.protocols
        ]

    async def register_protocols(self, address: str, ttl: float = 0) -> list[registry_pb2.RegisteredProtocol]:
        """Register the plugin at `address` (its Describe says which protocols); `ttl` seconds, 0: no expiry."""
        request = registry_pb2.RegisterProtocolRequest(address=address)
        if ttl:
            request.ttl.FromNanoseconds(int(ttl * 1e9))
        reply: registry_pb2.RegisterProtocolResponse = await self._call(self.registry.RegisterProtocol, request)
        return list(reply.protocols)

    async def put_rate_limit(self, key: str, limit: float, period: float, burst: float = 0) -> registry_pb2.RateLimit:
        """Set the rate limit of `key` (`protocol:NAME` for every call of a protocol): at most
        `limit + burst` units over any window of `period` seconds, `limit` per period in the long
        run. Operators and admins only."""
        rate_limit = registry_pb2.RateLimit(key=key, limit=limit, burst=burst)
        rate_limit.period.FromNanoseconds(int(period * 1e9))
        reply: registry_pb2.RateLimit = await self._call(
            self.registry.PutRateLimit, registry_pb2.PutRateLimitRequest(rate_limit=rate_limit)
        )
        return reply

    async def list_rate_limits(self) -> list[registry_pb2.RateLimit]:
        """Every rate limit, by key, with the units a call could take now (page after page)."""
        return [
            limit
            async for reply in self._pages(self.registry.ListRateLimits, registry_pb2.ListRateLimitsRequest())
            for limit in reply.rate_limits
        ]

    async def get_rate_limit(self, key: str) -> registry_pb2.RateLimit:
        """The limit that applies to `key`, its own or a template's (then named in `template`), with
        the units `key` has available now (`tenant:acme` under `tenant:*`). McpError NOT_FOUND when
        none applies."""
        reply: registry_pb2.RateLimit = await self._call(
            self.registry.GetRateLimit, registry_pb2.GetRateLimitRequest(key=key)
        )
        return reply

    async def delete_rate_limit(self, key: str) -> None:
        """Remove the rate limit of `key` (its calls go unlimited)."""
        await self._call(self.registry.DeleteRateLimit, registry_pb2.DeleteRateLimitRequest(key=key))
