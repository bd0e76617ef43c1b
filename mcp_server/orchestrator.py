"""Orchestrator: one replica of the server, put together. It builds the pieces (store ports,
plugin channels, breakers, the protocol directory, admission, the dispatcher) once, hands each
only what it uses, and starts and stops their background work.

What the server does for each family of RPCs lives in `service/`; the gRPC servicers in `api/`
call those through the attributes named here (`orchestrator.submission.submit_task(...)`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from mcp_server.auth import Principal
from mcp_server.bulk.worker import BulkWorker
from mcp_server.engine.cancelling import cancel_until_stopped
from mcp_server.engine.dispatcher import Dispatcher
from mcp_server.engine.plans import PlanCache
from mcp_server.engine.ports import EventListener, Store
from mcp_server.engine.runner import TaskRunner
from mcp_server.errors import McpError
from mcp_server.protocols.admission import Admission
from mcp_server.protocols.breakers import BreakerBoard, BreakerSettings
from mcp_server.protocols.caller import GrpcProtocolCaller
from mcp_server.protocols.channels import ChannelPool
from mcp_server.protocols.outliers import OutlierSettings
from mcp_server.protocols.rate_limits import RateLimitGate
from mcp_server.protocols.registry import ProtocolDirectory
from mcp_server.protocols.upkeep import RegistryUpkeep, UpkeepSettings
from mcp_server.schedules.firing import Firing
from mcp_server.schedules.scheduler import Scheduler
from mcp_server.service.bulk import BulkActions
from mcp_server.service.cancel_on import CallingOff
from mcp_server.service.cancelling import Cancelling
from mcp_server.service.deleting import Deleting
from mcp_server.service.event_waits import EventWaits
from mcp_server.service.events import Events
from mcp_server.service.protocols import Protocols
from mcp_server.service.reruns import Reruns
from mcp_server.service.schedules import Schedules
from mcp_server.service.signalling import Signalling
from mcp_server.service.submission import Submission
from mcp_server.service.task_reads import TaskReads
from mcp_server.service.watching import Watching
from mcp_server.service.workflows import Workflows
from mcp_server.settings import Settings
from mcp_server.task_views import TaskViews
from mcp_server.telemetry.metrics import Metrics, instrument_store
from mcp_server.telemetry.sampling import GaugeSampler
from mcp_server.telemetry.tracing import TaskTracer
from mcp_server.tls import plugin_credentials

log = logging.getLogger(__name__)


class Orchestrator:
    """The server's domain: workflows, tasks, the registry, and the replica's dispatcher."""

    def __init__(self, settings: Settings, store: Store, tracer: TaskTracer | None = None) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.store = store = instrument_store(store, self.metrics)
        self.tracer = tracer
        self.listeners: list[EventListener] = [self.metrics.on_event]
        if tracer is not None:
            self.listeners.append(tracer.on_event)
        self._build_protocols(settings, store, tracer)
        self.plans = PlanCache(store.workflows, settings)
        self.views = TaskViews(store.tasks, settings.limits)
        self.rate_limits = RateLimitGate(
            store.rate_limits,
            lambda key, granted: self.metrics.rate_limit_answers.labels(key, "granted" if granted else "waited").inc(),
            resume_soon=store.waits.resume_soon,
        )
        runner = TaskRunner(
            self.caller,
            store.tasks,
            settings.replica_id,
            self.listeners,
            settings.limits,
            settings.start_write_delay,
            store.waits,
            settings.wait_in_memory_seconds,
            self.rate_limits,
            store.step_cache,
        )
        self.dispatcher = Dispatcher(
            store.queue,
            store.tasks,
            runner,
            self.plans,
            settings,
            store.waits,
            on_purged=self.metrics.tasks_removed.labels("retention").inc,
            on_stopped=lambda reason: self.metrics.runs_stopped.labels(reason).inc(),
        )
        self.workflows = Workflows(settings, store.workflows, self.directory)
        self.protocols = Protocols(self.directory, settings.limits, self.rate_limits)
        self.watching = Watching(store.tasks, settings.limits, settings.watch_batch_delay)
        self.reads = TaskReads(store.tasks, self.views, settings.limits)
        self.step_cache = runner.step_cache
        self.deleting = Deleting(store.tasks, runner.step_cache, self.metrics.tasks_removed.labels("deleted").inc)
        self.cancelling = Cancelling(
            store.queue,
            store.tasks,
            self.dispatcher,
            self.reads,
            settings.lease_seconds,
            settings.replica_id,
            self.listeners,
        )
        self.submission = Submission(
            settings,
            store.workflows,
            store.queue,
            store.tasks,
            self.plans,
            self.dispatcher,
            self.views,
            self.watching,
            self.listeners,
            self.cancelling,
            self.rate_limits,
        )
        self.reruns = Reruns(settings, store.tasks, self.plans, self.submission)
        self.signalling = Signalling(
            settings,
            store.tasks,
            store.waits,
            self.plans,
            self.dispatcher,
            lambda outcome: self.metrics.signals.labels(outcome).inc(),
        )
        self.events = Events(
            settings,
            store.workflows,
            self.plans,
            self.submission,
            EventWaits(
                store.tasks,
                store.waits,
                store.kept_events,
                self.signalling,
                lambda outcome: self.metrics.event_waits.labels(outcome).inc(),
                settings.limits.max_kept_keys_per_event,
            ),
            CallingOff(store.tasks, self.plans, self.cancelling),
            lambda outcome: self.metrics.event_tasks.labels(outcome).inc(),
        )
        runner.publisher = self.events  # publish nodes publish through it
        self.firing = Firing(
            store.schedules,
            store.tasks,
            lambda request, owner: self.submission.submit_task(request, Principal(owner, frozenset()), limited=False),
            self.cancelling.cancel_soon,
            self._observe_fire,
        )
        self.schedules = Schedules(store.schedules, store.tasks, self.submission, self.firing)
        self.scheduler = Scheduler(store.schedules, self.firing, settings.lease_seconds)
        self.bulk = BulkActions(settings, store.bulk_actions)
        self.bulk_worker = BulkWorker(
            store.bulk_actions,
            store.tasks,
            self.cancelling.cancel_soon,
            self.reruns.rerun_task,
            self.deleting.delete_task,
            self.bulk.started,
            settings.lease_seconds,
            settings.retention_seconds,
            lambda kind, outcome: self.metrics.bulk_tasks.labels(kind, outcome).inc(),
        )
        self.sampler = GaugeSampler(
            self.metrics,
            store,
            self.dispatcher,
            self.directory,
            self.breakers,
            self.admission,
            lambda: sum(self.watching.watchers.values()),
            self.rate_limits,
        )
        self._background: list[asyncio.Task[None]] = []

    def _build_protocols(self, settings: Settings, store: Store, tracer: TaskTracer | None) -> None:
        """The plugin side: channels, breakers, the directory and its upkeep, admission, the caller."""
        self.channels = ChannelPool(
            settings.limits.max_message_bytes, plugin_credentials(settings), settings.plugin_call_streams
        )
        self.breakers = BreakerBoard(
            BreakerSettings(settings.breaker_failure_threshold, settings.breaker_reset_seconds), shared=store.registry
        )
        outliers = OutlierSettings(
            settings.outlier_consecutive_failures,
            settings.outlier_ejection_seconds,
            recent_failure_seconds=settings.outlier_recent_failure_seconds,
        )
        self.directory = ProtocolDirectory(
            store.registry,
            store.capacity,
            self.channels,
            self.breakers,
            settings.limits.max_value_depth,
            outliers,
            settings.limits.max_manifest_bytes,
        )
        self.upkeep = RegistryUpkeep(
            self.directory,
            UpkeepSettings(
                settings.plugin_ttl_seconds, settings.health_probe_seconds, settings.drop_unreachable_seconds
            ),
        )
        self.admission = Admission(
            store.capacity, settings.lease_seconds, settings.capacity_keep_seconds, settings.capacity_slice_units
        )
        self.caller = GrpcProtocolCaller(
            self.directory, self.channels, self.breakers, self.admission, settings.concurrency_overrides(), tracer
        )

    async def start(self) -> None:
        await self.directory.refresh(force=True)
        with contextlib.suppress(McpError):
            await self.upkeep.probe()  # instances left by a server that died are known dead before any call
        self.dispatcher.start()
        for work in (
            self.directory.keep_fresh(),
            self.upkeep.keep_own_registered(),
            self.upkeep.probe_and_prune(),
            self.breakers.sync_forever(),
            self.admission.keep_leases(),
            self.rate_limits.keep_fresh(),
            self.rate_limits.follow_changes(),
            self.scheduler.run_forever(),
            self.bulk_worker.run_forever(),
            self.workflows.purge_deleted_forever(self.settings.lease_seconds * 10 / 3),  # as finished tasks
            self.sampler.sample_forever(self.settings.metrics_sample_seconds),
        ):
            self._background.append(asyncio.create_task(work))
        if self.step_cache is not None:
            self._background.append(asyncio.create_task(self.step_cache.drop_removed()))

    def _observe_fire(self, outcome: str, lateness: float) -> None:
        self.metrics.schedule_fires.labels(outcome).inc()
        if outcome == "started":
            self.metrics.schedule_lateness.observe(lateness)

    async def stop(self) -> None:
        await self.dispatcher.stop(self.settings.shutdown_grace)
        for task in await cancel_until_stopped(self._background, within=5):
            log.error("the background task %s did not stop within 5 s of being cancelled", task.get_name())
        await self.upkeep.deregister_bundled()
        await self.admission.close()
        await self.channels.close()
