"""The store: every port of one opened backend, and its lifecycle."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from mcp_server.engine.ports.bulk import BulkActionStore
from mcp_server.engine.ports.cache import StepCache
from mcp_server.engine.ports.kept_events import KeptEventStore
from mcp_server.engine.ports.queue import TaskQueue
from mcp_server.engine.ports.ratelimits import RateLimitStore
from mcp_server.engine.ports.registry import CapacityLedger, RegistryStore
from mcp_server.engine.ports.schedules import ScheduleStore
from mcp_server.engine.ports.tasks import TaskStore
from mcp_server.engine.ports.waits import WaitStore
from mcp_server.engine.ports.workflows import WorkflowStore


class StoreConnection(Protocol):
    """What every port of a backend shares: its connection (a file, a Redis client)."""

    async def ping(self) -> None:
        """Raise Unavailable unless the backend answers (on a cluster: serves every slot)."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class Store:
    """Durable state, by job. `state.open_store` builds one for SQLite or Redis; both backends
    pass one contract suite per port (tests/contract/). A component is given the ports it uses."""

    workflows: WorkflowStore
    tasks: TaskStore
    queue: TaskQueue
    registry: RegistryStore
    capacity: CapacityLedger
    waits: WaitStore
    kept_events: KeptEventStore
    rate_limits: RateLimitStore
    schedules: ScheduleStore
    bulk_actions: BulkActionStore
    step_cache: StepCache
    connection: StoreConnection

    async def ping(self) -> None:
        await self.connection.ping()

    async def close(self) -> None:
        await self.connection.close()
