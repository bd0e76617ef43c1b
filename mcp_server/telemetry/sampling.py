"""Gauges that need a look at the replica or the store: sampled every few seconds."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from mcp_server.engine.dispatcher import Dispatcher
from mcp_server.engine.ports import Store
from mcp_server.errors import McpError
from mcp_server.protocols.admission import Admission
from mcp_server.protocols.breakers import BreakerBoard
from mcp_server.protocols.capacity import RESOURCES, Resources
from mcp_server.protocols.rate_limits import RateLimitGate
from mcp_server.protocols.registry import ProtocolDirectory
from mcp_server.telemetry.metrics import BREAKER_VALUES, Metrics


class GaugeSampler:
    """Refreshes queue depth by priority, tasks in flight, watchers, breakers and capacity."""

    def __init__(
        self,
        metrics: Metrics,
        store: Store,
        dispatcher: Dispatcher,
        directory: ProtocolDirectory,
        breakers: BreakerBoard,
        admission: Admission,
        watchers: Callable[[], int],
        rate_limits: RateLimitGate,
    ) -> None:
        self.metrics = metrics
        self.store = store
        self.dispatcher = dispatcher
        self.directory = directory
        self.breakers = breakers
        self.admission = admission
        self.watchers = watchers
        self.rate_limits = rate_limits

    async def sample_forever(self, interval: float = 5.0) -> None:
        """Run as a background task."""
        while True:
            await self.sample()
            await asyncio.sleep(interval)

    async def sample(self) -> None:
        metrics = self.metrics
        metrics.in_flight.set(self.dispatcher.in_flight)
        metrics.paused.set(len(self.dispatcher.runner.paused_runs))
        metrics.watchers.set(self.watchers())
        for protocol, state in self.breakers.states().items():
            metrics.breaker_state.labels(protocol).set(BREAKER_VALUES.get(state, 0))
        for protocol, waiting in self.admission.waiting.items():
            metrics.capacity_waiters.labels(protocol).set(waiting)
        metrics.capacity_kept.set(self.admission.kept_count)
        await self._sample_rate_limits()
        await self._sample_capacity()
        try:
            depth = await self.store.queue.queue_depth_by_priority()
            metrics.tasks_waiting.set(await self.store.waits.waiting_count())
        except McpError:
            return
        metrics.queue_depth.clear()
        for priority, count in depth.items():
            metrics.queue_depth.labels(str(priority)).set(count)

    async def _sample_rate_limits(self) -> None:
        """Every limit's room now (one read of them all, at the sampling pace)."""
        metrics = self.metrics
        limits = await self.rate_limits.sampled()
        for gauge in (metrics.rate_limit_available, metrics.rate_limit_limit, metrics.rate_limit_waiting):
            gauge.clear()
        for spec, room in limits:
            metrics.rate_limit_available.labels(spec.key).set(room)
            metrics.rate_limit_limit.labels(spec.key).set(spec.capacity)
        for key, waiting in self.rate_limits.waiters.items():
            metrics.rate_limit_waiting.labels(key).set(waiting)

    async def _sample_capacity(self) -> None:
        try:
            use = {a: Resources.decode(u) for a, u in (await self.store.capacity.capacity_in_use()).items()}
        except McpError:
            return
        for name in self.directory.known_names():
            for instance in self.directory.instances(name):
                capacity = Resources.of_capacity(instance.capacity)
                used = use.get(instance.address, Resources())
                for resource, offered, held in zip(RESOURCES, capacity.amounts, used.amounts):
                    self.metrics.instance_capacity.labels(instance.address, resource).set(offered)
                    self.metrics.instance_in_use.labels(instance.address, resource).set(held)
