"""Prometheus metrics (prometheus-client), served over HTTP on `--metrics-port`.

See docs/metrics.md for what each one means.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from mcp_sdk.proto import task_pb2
from mcp_server.engine.event_types import E
from mcp_server.engine.queue_deadlines import QUEUE_TIMEOUT

log = logging.getLogger(__name__)
StoreT = TypeVar("StoreT")
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
STORE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1)
BREAKER_VALUES = {"closed": 0, "half-open": 1, "open": 2}
TERMINAL = {
    E.TASK_EVENT_TYPE_COMPLETED: "completed",
    E.TASK_EVENT_TYPE_FAILED: "failed",
    E.TASK_EVENT_TYPE_CANCELLED: "cancelled",
}
STEP_ENDS = {E.TASK_EVENT_TYPE_STEP_COMPLETED: "completed", E.TASK_EVENT_TYPE_STEP_FAILED: "failed"}


class Metrics:
    """Every metric of one orchestrator, on its own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.tasks_submitted = Counter(
            "mcp_tasks_submitted_total", "Tasks accepted, by workflow", ["workflow"], registry=r
        )
        self.tasks_finished = Counter(
            "mcp_tasks_finished_total", "Tasks that ended, by workflow and outcome", ["workflow", "status"], registry=r
        )
        self.steps = Histogram(
            "mcp_step_duration_seconds",
            "Duration of protocol steps (all attempts), by protocol and outcome",
            ["protocol", "status"],
            buckets=STEP_BUCKETS,
            registry=r,
        )
        self._step_children: dict[tuple[str, str], Any] = {}
        self._usage_children: dict[tuple[str, str, str], Any] = {}
        self._task_children: dict[tuple[str, str], Any] = {}  # per workflow: submitted, and each end
        self.retries = Counter(
            "mcp_step_retries_total",
            "Retried protocol calls, by protocol and gRPC code",
            ["protocol", "code"],
            registry=r,
        )
        self.fallbacks = Counter(
            "mcp_fallbacks_total", "Fallbacks used, by the fallback protocol", ["protocol"], registry=r
        )
        self.breaker_changes = Counter(
            "mcp_breaker_transitions_total",
            "Circuit breaker state changes seen by tasks",
            ["protocol", "state"],
            registry=r,
        )
        self.breaker_state = Gauge(
            "mcp_breaker_state", "Breaker state per protocol: 0 closed, 1 half-open, 2 open", ["protocol"], registry=r
        )
        self.transitions = Counter("mcp_adaptive_transitions_total", "Adaptive state transitions taken", registry=r)
        self.decisions = Counter(
            "mcp_supervisor_decisions_total", "Supervisor decisions, by verdict", ["verdict"], registry=r
        )
        self.takeovers = Counter(
            "mcp_lease_takeovers_total", "Tasks resumed from a snapshot (after a crash or lease loss)", registry=r
        )
        self.queue_depth = Gauge("mcp_queue_depth", "Tasks waiting in the queue, by priority", ["priority"], registry=r)
        self.in_flight = Gauge("mcp_tasks_in_flight", "Tasks running on this replica", registry=r)
        self.watchers = Gauge("mcp_watchers", "WatchTask streams open on this replica", registry=r)
        self.paused = Gauge(
            "mcp_tasks_paused", "Tasks of this replica waiting to write: the store refused (down or full)", registry=r
        )
        self.store_latency = Histogram(
            "mcp_store_operation_seconds",
            "Store call latency, by operation",
            ["operation"],
            buckets=STORE_BUCKETS,
            registry=r,
        )
        self.store_errors = Counter(
            "mcp_store_errors_total", "Store calls that failed, by operation", ["operation"], registry=r
        )
        self.instance_capacity = Gauge(
            "mcp_instance_capacity",
            "What a plugin instance offers (0: unlimited), by resource",
            ["address", "resource"],
            registry=r,
        )
        self.instance_in_use = Gauge(
            "mcp_instance_capacity_in_use",
            "What calls of every replica hold on a plugin instance",
            ["address", "resource"],
            registry=r,
        )
        self.capacity_kept = Gauge(
            "mcp_capacity_kept_grants", "Grants this replica keeps for its next calls while nobody waits", registry=r
        )
        self.tasks_waiting = Gauge(
            "mcp_tasks_waiting", "Tasks whose every branch waits for a signal or a timer (all replicas)", registry=r
        )
        self.signals = Counter(
            "mcp_signals_total",
            "Signals sent to tasks, by outcome: taken (by a step), kept, sent (to the replica running the task), "
            "repeated (a request_id seen before), or refused with its reason",
            ["outcome"],
            registry=r,
        )
        self.timers_fired = Counter("mcp_timers_fired_total", "Waits and sleeps their deadline ended", registry=r)
        self.timer_lateness = Histogram(
            "mcp_timer_lateness_seconds",
            "How long after its deadline a wait or sleep ended",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
            registry=r,
        )
        self.tasks_removed = Counter(
            "mcp_tasks_removed_total",
            "Finished tasks removed from the store with everything they held, by reason: deleted"
            " (DeleteTask) or retention (the purge)",
            ["reason"],
            registry=r,
        )
        self.runs_stopped = Counter(
            "mcp_runs_stopped_total",
            "Runs this replica stopped for their lease, by reason: lease_lost (another replica holds the task)"
            " or lease_unrenewed (the store did not renew it in time: this replica is cut off, or the store slow)",
            ["reason"],
            registry=r,
        )
        self.reruns = Counter(
            "mcp_reruns_total", "Tasks started as reruns of finished tasks, by workflow", ["workflow"], registry=r
        )
        self.reused_steps = Counter(
            "mcp_rerun_reused_steps_total", "Steps reruns kept from the tasks they rerun, not run again", registry=r
        )
        self.step_cache = Counter(
            "mcp_step_cache",
            "Steps with a cache, by outcome (hit: nothing called; miss: called, output kept)",
            ["outcome"],
            registry=r,
        )
        self.step_cache_bytes = Counter(
            "mcp_step_cache_bytes",
            "Bytes of outputs read from (hit) or written to (miss) the step cache",
            ["outcome"],
            registry=r,
        )
        self.usage = Counter(
            "mcp_usage",
            "What steps' calls used, as plugins report it (ExecuteResponse.usage), by protocol, owner and name",
            ["protocol", "owner", "name"],
            registry=r,
        )
        self.bulk_tasks = Counter(
            "mcp_bulk_action_tasks_total",
            "Tasks bulk actions worked on by this replica dealt with, by kind (cancel, rerun, delete) and outcome"
            " (succeeded, skipped, failed)",
            ["kind", "outcome"],
            registry=r,
        )
        self.event_tasks = Counter(
            "mcp_event_tasks_total",
            "Workflows published events reached through this replica, by outcome (started: a new task,"
            " existing: the task of an earlier publish of the event, refused: for good, later: refused for now)",
            ["outcome"],
            registry=r,
        )
        self.event_waits = Counter(
            "mcp_event_waits_total",
            "Waits for events (WaitNode.event) published events reached through this replica, by outcome"
            " (woken, existing: reached by an earlier publish of the event, refused: by the wait's schema"
            " or condition, passed: its condition did not hold, later: the store away, kept: a wait's"
            " lookback took a kept event)",
            ["outcome"],
            registry=r,
        )
        self.schedule_fires = Counter(
            "mcp_schedule_fires_total",
            "Fire times of schedules dealt with by this replica, by outcome"
            " (started, skipped, buffered, missed, failed)",
            ["outcome"],
            registry=r,
        )
        self.schedule_lateness = Histogram(
            "mcp_schedule_lateness_seconds",
            "From a fire time (plus its jitter) to its task's submission",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 30, 300),
            registry=r,
        )
        self.rate_limit_answers = Counter(
            "mcp_rate_limit_answers_total",
            "Asks for rate-limit units by this replica's calls, by key and outcome (granted, waited)",
            ["key", "outcome"],
            registry=r,
        )
        self.rate_limit_waiting = Gauge(
            "mcp_rate_limit_waiting", "Steps of this replica waiting for units, by rate limit key", ["key"], registry=r
        )
        self.rate_limit_available = Gauge(
            "mcp_rate_limit_available",
            "Units a call could take now, by rate limit key (all replicas)",
            ["key"],
            registry=r,
        )
        self.rate_limit_limit = Gauge(
            "mcp_rate_limit_capacity",
            "Units a window of one period may hold (limit + burst), by key",
            ["key"],
            registry=r,
        )
        self.queue_timeouts = Counter(
            "mcp_queue_timeouts_total",
            "Tasks that ended CANCELLED unstarted, past their queue deadline, by workflow",
            ["workflow"],
            registry=r,
        )
        self.clean_ups = Counter(
            "mcp_task_clean_ups_total",
            "Cancelled tasks that ran the handlers of recover nodes with on_cancel, by workflow and outcome",
            ["workflow", "outcome"],
            registry=r,
        )
        self.capacity_waiters = Gauge(
            "mcp_capacity_waiters", "Calls of this replica waiting for capacity, by protocol", ["protocol"], registry=r
        )

    def on_event(self, task: task_pb2.Task, event: task_pb2.TaskEvent) -> None:
        """EventListener: count what the event says happened. Runs for every event, so the
        common ones come first and their labelled children are looked up once."""
        kind = event.type
        if kind == E.TASK_EVENT_TYPE_STEP_STARTED:
            return
        if kind in STEP_ENDS:
            data = event.data.fields
            if event.protocol:
                seconds = data["duration_ms"].number_value / 1000 if "duration_ms" in data else 0
                self._step_child(event.protocol, STEP_ENDS[kind]).observe(seconds)
                if "cache" in data:
                    outcome = data["cache"].string_value
                    self.step_cache.labels(outcome).inc()
                    self.step_cache_bytes.labels(outcome).inc(data["cache_bytes"].number_value)
                if "usage" in data:
                    for name, amount in data["usage"].struct_value.fields.items():
                        self._usage_child(event.protocol, task.owner, name).inc(amount.number_value)
            elif "timer_late_ms" in data:
                self.timers_fired.inc()
                self.timer_lateness.observe(max(0.0, data["timer_late_ms"].number_value / 1000))
        elif kind == E.TASK_EVENT_TYPE_QUEUED:
            self._task_child(task.workflow_id, "").inc()
            if task.rerun_of:
                self.reruns.labels(task.workflow_id).inc()
                kept = event.data.fields.get("kept_steps")
                self.reused_steps.inc(kept.number_value if kept is not None else 0)
        elif kind in TERMINAL:
            self._task_child(task.workflow_id, TERMINAL[kind]).inc()
            if kind == E.TASK_EVENT_TYPE_CANCELLED and event.message.startswith(QUEUE_TIMEOUT):
                self.queue_timeouts.labels(task.workflow_id).inc()
            elif kind == E.TASK_EVENT_TYPE_CANCELLED and task.cancel_request.outcome:
                self.clean_ups.labels(task.workflow_id, task.cancel_request.outcome).inc()
        elif kind == E.TASK_EVENT_TYPE_STEP_RETRYING:
            data = event.data.fields
            self.retries.labels(event.protocol, data["code"].string_value if "code" in data else "").inc()
        elif kind == E.TASK_EVENT_TYPE_FALLBACK_USED:
            self.fallbacks.labels(event.protocol).inc()
        elif kind == E.TASK_EVENT_TYPE_BREAKER_STATE_CHANGED:
            data = event.data.fields
            self.breaker_changes.labels(event.protocol, data["to"].string_value if "to" in data else "").inc()
        elif kind == E.TASK_EVENT_TYPE_TRANSITION_TAKEN:
            self.transitions.inc()
        elif kind == E.TASK_EVENT_TYPE_SUPERVISOR_DECISION:
            data = event.data.fields
            self.decisions.labels(data["verdict"].string_value if "verdict" in data else "").inc()
        elif kind == E.TASK_EVENT_TYPE_RESUMED:
            self.takeovers.inc()

    def _usage_child(self, protocol: str, owner: str, name: str) -> Any:
        child = self._usage_children.get((protocol, owner, name))
        if child is None:
            if len(self._usage_children) > 100_000:
                self._usage_children.clear()
            child = self._usage_children[(protocol, owner, name)] = self.usage.labels(protocol, owner, name)
        return child

    def _task_child(self, workflow_id: str, end: str) -> Any:
        """The counter of tasks of `workflow_id` submitted (`end` empty) or ended so."""
        child = self._task_children.get((workflow_id, end))
        if child is None:
            if len(self._task_children) > 100_000:
                self._task_children.clear()
            counter = self.tasks_finished.labels(workflow_id, end) if end else self.tasks_submitted.labels(workflow_id)
            child = self._task_children[(workflow_id, end)] = counter
        return child

    def _step_child(self, protocol: str, status: str) -> Any:
        child = self._step_children.get((protocol, status))
        if child is None:
            child = self._step_children[(protocol, status)] = self.steps.labels(protocol, status)
        return child

    def serve(self, port: int, address: str = "127.0.0.1") -> None:
        """Serve /metrics on `port` (a daemon thread of prometheus-client; it never touches the loop)."""
        start_http_server(port, addr=address, registry=self.registry)


UNTIMED = frozenset({"wait_events"})


def instrument_store(store: StoreT, metrics: Metrics) -> StoreT:
    """Wrap every coroutine method of each of `store`'s ports (a dataclass of them) so its latency
    and failures are measured, labelled by the method's name. Of the connection the ports share,
    only `ping`: its other methods are what every port's calls go through, timed already. Not
    `wait_events` either: it waits for a task's next events, so its time is the task's, not the store's."""
    for field in dataclasses.fields(store):  # type: ignore[arg-type]
        port = getattr(store, field.name)
        for name in dir(port):
            if name.startswith("_") or name in UNTIMED or (field.name == "connection" and name != "ping"):
                continue
            method = getattr(port, name)
            if asyncio.iscoroutinefunction(method):
                setattr(port, name, _timed(name, method, metrics))
    return store


def _timed(name: str, method: Callable[..., Awaitable[Any]], metrics: Metrics) -> Callable[..., Awaitable[Any]]:
    histogram = metrics.store_latency.labels(name)
    errors = metrics.store_errors.labels(name)

    async def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await method(*args, **kwargs)
        except Exception:
            errors.inc()
            raise
        finally:
            histogram.observe(time.perf_counter() - started)

    return timed
