"""Orchestrator: what the server does, independent of how requests arrive.

The gRPC servicers in `api/` unpack a request, call one method here and pack the reply.
Everything here raises McpError subclasses only; `api/interceptor.py` maps them to statuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence

from mcp_sdk.proto import registry_pb2, task_pb2, workflow_pb2
from mcp_server.auth import ANONYMOUS_ADMIN, Principal
from mcp_server.engine.compiler import compile_workflow
from mcp_server.engine.context import make_event, now
from mcp_server.engine.dispatcher import Dispatcher
from mcp_server.engine.event_types import E
from mcp_server.engine.payload import Payload
from mcp_server.engine.plan import Plan
from mcp_server.engine.plans import PlanCache
from mcp_server.engine.ports import EventListener, Store, TaskFilter
from mcp_server.engine.runner import TaskRunner
from mcp_server.engine.values import ValueTooDeep, message_depth
from mcp_server.errors import FailedPrecondition, FieldViolation, InvalidArgument, McpError, NotFound, ResourceExhausted
from mcp_server.protocols.admission import Admission
from mcp_server.protocols.breakers import BreakerBoard, BreakerSettings
from mcp_server.protocols.caller import GrpcProtocolCaller
from mcp_server.protocols.capacity import RESOURCES, Resources, never_fits
from mcp_server.protocols.channels import ChannelPool
from mcp_server.protocols.outliers import OutlierSettings
from mcp_server.protocols.registry import ProtocolDirectory
from mcp_server.protocols.upkeep import RegistryUpkeep, UpkeepSettings
from mcp_server.ratelimit import RateLimiter
from mcp_server.settings import Settings
from mcp_server.state.common import TERMINAL, assemble, decode_token, encode_token, fixed_part, request_task_id
from mcp_server.task_views import TaskViews, chunks, steps_start, steps_token
from mcp_server.telemetry.metrics import BREAKER_VALUES, Metrics, instrument_store
from mcp_server.telemetry.tracing import TaskTracer
from mcp_server.tls import plugin_credentials

TERMINAL_EVENTS = frozenset({E.TASK_EVENT_TYPE_COMPLETED, E.TASK_EVENT_TYPE_FAILED, E.TASK_EVENT_TYPE_CANCELLED})
MAX_REQUEST_ID = 128
# A watcher whose task is quiet looks at the task's header (did it end unseen, was it purged?)
# after 1 s without events, then after 2, 4, ... up to this; events reach it from memory at once
# whatever the wait. Looking every second cost 10,000 queued RunTask calls 10,000 store reads a
# second (their server CPU on SQLite: 42 s, against 29 s with this).
MAX_QUIET_WAIT_SECONDS = 8.0


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
        self.channels = ChannelPool(
            settings.limits.max_message_bytes, plugin_credentials(settings), settings.plugin_call_streams
        )
        self.breakers = BreakerBoard(
            BreakerSettings(settings.breaker_failure_threshold, settings.breaker_reset_seconds), shared=store
        )
        outliers = OutlierSettings(
            settings.outlier_consecutive_failures,
            settings.outlier_ejection_seconds,
            recent_failure_seconds=settings.outlier_recent_failure_seconds,
        )
        self.directory = ProtocolDirectory(
            store, self.channels, self.breakers, settings.limits.max_value_depth, outliers
        )
        self.upkeep = RegistryUpkeep(
            self.directory,
            UpkeepSettings(
                settings.plugin_ttl_seconds, settings.health_probe_seconds, settings.drop_unreachable_seconds
            ),
        )
        self.admission = Admission(store, settings.lease_seconds, settings.capacity_keep_seconds)
        self.caller = GrpcProtocolCaller(
            self.directory, self.channels, self.breakers, self.admission, settings.concurrency_overrides(), tracer
        )
        self.plans = PlanCache(store, settings)
        self.views = TaskViews(store, settings.limits)
        runner = TaskRunner(
            self.caller, store, settings.replica_id, self.listeners, settings.limits, settings.start_write_delay
        )
        self.dispatcher = Dispatcher(store, runner, self.plans, settings)
        self._background: list[asyncio.Task[None]] = []
        self._watchers: dict[str, int] = {}
        self.rate_limiter = RateLimiter(settings.limits.submissions_per_second)

    async def start(self) -> None:
        await self.directory.refresh(force=True)
        with contextlib.suppress(McpError):
            await self.upkeep.probe()  # instances left by a server that died are known dead before any call
        self.dispatcher.start()
        self._background.append(asyncio.create_task(self.directory.keep_fresh()))
        self._background.append(asyncio.create_task(self.upkeep.keep_own_registered()))
        self._background.append(asyncio.create_task(self.upkeep.probe_and_prune()))
        self._background.append(asyncio.create_task(self.breakers.sync_forever()))
        self._background.append(asyncio.create_task(self.admission.keep_leases()))
        self._background.append(asyncio.create_task(self._sample_forever(self.settings.metrics_sample_seconds)))

    async def stop(self) -> None:
        await self.dispatcher.stop(self.settings.shutdown_grace)
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.upkeep.deregister_bundled()
        await self.admission.close()
        await self.channels.close()

    # ---- workflows ------------------------------------------------------------------------
    async def validate_workflow(self, workflow: workflow_pb2.Workflow) -> Plan:
        """Compile `workflow` against the registered protocols; raise InvalidArgument if bad."""
        await self.directory.refresh(force=True)
        plan = compile_workflow(
            workflow,
            self.settings.limits,
            known_protocols=self.directory.known_names(),
            default_step_timeout=self.settings.default_step_timeout,
            default_task_timeout=self.settings.default_task_timeout,
        )
        self._check_capacity(plan)
        return plan

    def _check_capacity(self, plan: Plan) -> None:
        """Refuse a workflow with a step no registered instance could ever run: it needs more of
        a resource than any instance of its protocol offers."""
        problems = []
        for path, name in plan.protocol_uses:
            instances = self.directory.instances(name)
            sized = [
                (i, Resources.needs_of(i.manifest.resources), Resources.of_capacity(i.capacity)) for i in instances
            ]
            if sized and all(never_fits(capacity, needs) for _, needs, capacity in sized):
                offers = "; ".join(f"{i.address} offers {capacity.describe()}" for i, _, capacity in sized)
                problems.append(
                    FieldViolation(
                        path,
                        f"protocol {name} needs {sized[0][1].describe()} per call, more than any "
                        f"registered instance offers ({offers})",
                    )
                )
        if problems:
            raise FailedPrecondition(
                f"workflow {plan.workflow_id!r} can never run: {problems[0].field}: {problems[0].description}",
                violations=problems,
                reason="INSUFFICIENT_CAPACITY",
            )

    async def create_workflow(self, workflow: workflow_pb2.Workflow) -> workflow_pb2.Workflow:
        await self.validate_workflow(workflow)
        return await self.store.create_workflow(workflow)

    async def get_workflow(self, workflow_id: str, version: int) -> workflow_pb2.Workflow:
        _require("workflow_id", workflow_id)
        if version < 0:
            raise InvalidArgument(
                "version must not be negative",
                violations=[FieldViolation("version", "must be 0 (latest) or a version number")],
            )
        workflow = await self.store.get_workflow(workflow_id, version)
        if workflow is None:
            which = f"version {version}" if version else "any version"
            raise NotFound(
                f"workflow {workflow_id!r} ({which}) not found",
                reason="WORKFLOW_NOT_FOUND",
                metadata={"workflow_id": workflow_id},
            )
        return workflow

    async def list_workflows(self, page_size: int, page_token: str) -> tuple[list[workflow_pb2.Workflow], str]:
        """The latest version of each workflow, by workflow_id."""
        return await self.store.list_workflows(self.page_size(page_size), page_token)

    async def list_protocols(
        self, page_size: int, page_token: str
    ) -> tuple[list[registry_pb2.RegisteredProtocol], str]:
        """Protocol instances by name then address, with health, breaker, ejection and use."""
        size = self.page_size(page_size)
        after = decode_token(page_token)
        entries = [e for e in await self.directory.listing() if f"{e.manifest.name}\0{e.address}" > after]
        page = entries[:size]
        return page, encode_token(f"{page[-1].manifest.name}\0{page[-1].address}") if len(entries) > size else ""

    async def get_protocol(self, name: str) -> list[registry_pb2.RegisteredProtocol]:
        """Every instance of protocol `name` (NotFound when there is none)."""
        _require("name", name)
        return await self.directory.get(name)

    async def delete_workflow(self, workflow_id: str) -> int:
        _require("workflow_id", workflow_id)
        deleted = await self.store.delete_workflow(workflow_id)
        if not deleted:
            raise NotFound(
                f"workflow {workflow_id!r} not found",
                reason="WORKFLOW_NOT_FOUND",
                metadata={"workflow_id": workflow_id},
            )
        return deleted

    # ---- tasks ----------------------------------------------------------------------------
    async def submit_task(
        self, request: task_pb2.SubmitTaskRequest, principal: Principal = ANONYMOUS_ADMIN
    ) -> tuple[task_pb2.Task, bool]:
        """Queue a run owned by `principal`. The same request_id returns the first task
        (created=False). Raises ResourceExhausted past the principal's submission rate."""
        _require("workflow_id", request.workflow_id)
        self.rate_limiter.take(principal.name)
        limits = self.settings.limits
        size = request.input_data.ByteSize()
        if size > limits.max_input_bytes:
            raise InvalidArgument(
                f"input_data is {size} bytes; the limit is {limits.max_input_bytes}",
                violations=[
                    FieldViolation("input_data", f"{size} bytes exceeds the limit of {limits.max_input_bytes}")
                ],
                reason="INPUT_TOO_LARGE",
            )
        depth = message_depth(request.input_data, limits.max_value_depth)
        if depth > limits.max_value_depth:
            problem = str(ValueTooDeep("input_data", depth, limits.max_value_depth))
            raise InvalidArgument(problem, violations=[FieldViolation("input_data", problem)], reason="VALUE_TOO_DEEP")
        if len(request.request_id) > MAX_REQUEST_ID:
            raise InvalidArgument(
                "request_id is too long",
                violations=[FieldViolation("request_id", f"at most {MAX_REQUEST_ID} characters")],
            )
        version = request.workflow_version or await self.store.latest_workflow_version(request.workflow_id)
        if not version:
            raise NotFound(
                f"workflow {request.workflow_id!r} (any version) not found",
                reason="WORKFLOW_NOT_FOUND",
                metadata={"workflow_id": request.workflow_id},
            )
        plan = await self.plans.get(request.workflow_id, version)  # compiled once per version, then cached
        task_id = request_task_id(principal.name, request.request_id) if request.request_id else uuid.uuid4().hex
        task = task_pb2.Task(
            task_id=task_id,
            workflow_id=plan.workflow_id,
            workflow_version=version,
            input_data=request.input_data,
            status=task_pb2.TASK_STATUS_PENDING,
            priority=request.priority,
            request_id=request.request_id,
            labels=dict(request.labels),
            create_time=now(),
            last_sequence=1,
            owner=principal.name,
        )
        values = {}
        given = Payload.of_struct(request.input_data)
        if given.size > limits.inline_value_bytes:  # stored once, beside the task, and read by reference
            values[given.sha256] = given.serialized()
            task.ClearField("input_data")
            task.input_ref.CopyFrom(task_pb2.ValueRef(size_bytes=given.size, sha256=given.sha256))
        event = make_event(task.task_id, 1, E.TASK_EVENT_TYPE_QUEUED, message=f"queued with priority {task.priority}")
        fingerprint = (
            hashlib.sha256(request.SerializeToString(deterministic=True)).hexdigest() if request.request_id else ""
        )
        # With room here and nothing waiting in the queue, the task starts on this replica at once,
        # leased as it is stored: no trip through the queue, no claim round trip.
        holder = self.settings.replica_id if self.dispatcher.has_room() and self.dispatcher.queue_seen_empty() else ""
        stored, created, token = await self.store.create_leased(
            task, event, holder, self.settings.lease_seconds, limits.max_queue_length, fingerprint, values
        )
        if created:
            for listener in self.listeners:
                listener(stored, event)
            if token:
                self.dispatcher.adopt(stored, token)
            else:
                self.dispatcher.wake()
        return self.views.basic(stored), created

    async def run_task(
        self,
        request: task_pb2.SubmitTaskRequest,
        principal: Principal = ANONYMOUS_ADMIN,
        submitted: Callable[[task_pb2.Task], Awaitable[None]] | None = None,
    ) -> tuple[task_pb2.Task, bool]:
        """submit_task, then wait for the task to end and return it (BASIC view). `submitted`
        hears of the task as soon as it is queued."""
        task, created = await self.submit_task(request, principal)
        ended_here = self.dispatcher.end_of(task.task_id)  # looked up now: the run may end while we send
        if submitted is not None:
            await submitted(task)
        if task.status in TERMINAL:
            return task, created
        if ended_here is not None and (live := await ended_here):
            # The run ended on this replica and wrote its end: the header is the stored fixed part
            # and that live part, exactly as the store would assemble it; no read needed.
            final = assemble(fixed_part(task), live)
            if final.status in TERMINAL:
                return self.views.basic(final), created
        # It runs elsewhere (or its run here did not end it): follow its log as a watcher does.
        async for _ in self.watch_task_batches(task.task_id, task.last_sequence, principal):
            pass
        return self.views.basic(await self._header(task.task_id, principal)), created

    @contextlib.contextmanager
    def _watching(self, task_id: str) -> Iterator[None]:
        """Count one more watcher of `task_id` while the block runs, within the limit per task."""
        if self._watchers.get(task_id, 0) >= self.settings.limits.max_watchers_per_task:
            raise ResourceExhausted(
                f"task {task_id} has {self.settings.limits.max_watchers_per_task} watchers, the limit",
                reason="TOO_MANY_WATCHERS",
            )
        self._watchers[task_id] = self._watchers.get(task_id, 0) + 1
        try:
            yield
        finally:
            self._watchers[task_id] -= 1
            if not self._watchers[task_id]:
                del self._watchers[task_id]

    async def get_task(
        self, task_id: str, principal: Principal = ANONYMOUS_ADMIN, view: int = task_pb2.TASK_VIEW_FULL
    ) -> task_pb2.Task:
        """The task, if `principal` may see it: its owner, or an admin. Another principal's task
        answers NOT_FOUND, exactly like a task that does not exist. FULL carries the step states
        that fit in one response; BASIC none."""
        header = await self._header(task_id, principal)
        if view == task_pb2.TASK_VIEW_BASIC:
            return self.views.basic(header)
        return await self.views.full(header)

    async def _header(self, task_id: str, principal: Principal) -> task_pb2.Task:
        _require("task_id", task_id)
        task = await self.store.get_task(task_id)
        if task is None or not (principal.is_admin or task.owner == principal.name):
            raise NotFound(f"task {task_id!r} not found", reason="TASK_NOT_FOUND", metadata={"task_id": task_id})
        return task

    async def list_tasks(
        self,
        page_size: int,
        page_token: str,
        statuses: Sequence[int],
        workflow_id: str,
        principal: Principal = ANONYMOUS_ADMIN,
        view: int = task_pb2.TASK_VIEW_BASIC,
        owner: str = "",
    ) -> tuple[list[task_pb2.Task], str, int]:
        """Tasks newest first, as many as fit in one response; an admin may filter by owner,
        anyone else sees only their own."""
        if not principal.is_admin:
            if owner and owner != principal.name:
                return [], "", 0  # another principal's tasks do not exist for this caller
            owner = principal.name
        where = TaskFilter(tuple(statuses), workflow_id, owner)
        page = await self.store.list_tasks(self.page_size(page_size), page_token, where)
        shown = await self.views.many(page.tasks, with_steps=view == task_pb2.TASK_VIEW_FULL)
        more = page.more or len(shown) < len(page.tasks)
        return shown, page.after[len(shown) - 1] if shown and more else "", page.total

    async def list_task_steps(
        self, task_id: str, page_size: int, page_token: str, principal: Principal = ANONYMOUS_ADMIN
    ) -> tuple[list[task_pb2.StepState], str, int]:
        """A task's step states in the order they first started, as many as fit in one response."""
        header = await self._header(task_id, principal)
        start = steps_start(task_id, page_token)
        page = await self.views.steps(task_id, start, self.page_size(page_size))
        token = steps_token(task_id, page.next_index) if page.next_index is not None else ""
        return page.steps, token, header.step_count

    async def read_value(
        self, task_id: str, step_path: str, field: int, principal: Principal = ANONYMOUS_ADMIN
    ) -> AsyncIterator[task_pb2.ValueChunk]:
        """One value of a task, in chunks (see ReadValue in task.proto)."""
        header = await self._header(task_id, principal)
        data = await self.views.value_bytes(header, step_path, field)
        async for chunk in chunks(data, hashlib.sha256(data).hexdigest()):
            yield chunk

    async def cancel_task(self, task_id: str, reason: str, principal: Principal = ANONYMOUS_ADMIN) -> task_pb2.Task:
        """Cancel a pending or running task; cancelling a cancelled task again changes nothing."""
        task = await self._header(task_id, principal)
        if task.status == task_pb2.TASK_STATUS_CANCELLED:
            return await self.get_task(task_id, principal)
        if task.status in TERMINAL:
            raise FailedPrecondition(
                f"task {task_id} already finished as {task_pb2.TaskStatus.Name(task.status)}", reason="TASK_FINISHED"
            )
        why = reason or "cancelled by request"
        event = task_pb2.TaskEvent(task_id=task_id, type=E.TASK_EVENT_TYPE_CANCELLED, time=now(), message=why)
        cancelled = await self.store.cancel_pending(task_id, event)
        if cancelled is None and not await self.dispatcher.cancel(task_id, why):
            # It runs on another replica: leave a request there; that replica acts within a second.
            await self.store.request_cancel(task_id, why)
            async with asyncio.timeout(self.settings.lease_seconds + 5):
                while (latest := await self._header(task_id, principal)).status not in TERMINAL:
                    await self.store.wait_events(task_id, latest.last_sequence, timeout=0.5)
        return await self.get_task(task_id, principal)

    async def watch_task(
        self, task_id: str, after_sequence: int, principal: Principal = ANONYMOUS_ADMIN
    ) -> AsyncIterator[task_pb2.TaskEvent]:
        """Every event after `after_sequence`, then live ones, until the terminal event."""
        async for batch in self.watch_task_batches(task_id, after_sequence, principal):
            for event in batch:
                yield event

    async def watch_task_batches(
        self, task_id: str, after_sequence: int, principal: Principal = ANONYMOUS_ADMIN
    ) -> AsyncIterator[list[task_pb2.TaskEvent]]:
        """watch_task, the events that are ready together in one list."""
        await self._header(task_id, principal)
        async for batch in self._follow(task_id, after_sequence, principal):
            yield batch

    async def submit_and_watch(
        self, request: task_pb2.SubmitTaskRequest, principal: Principal = ANONYMOUS_ADMIN
    ) -> tuple[task_pb2.Task, bool, AsyncIterator[list[task_pb2.TaskEvent]]]:
        """submit_task, and the task's events from its first, as watch_task_batches gives them.
        No header is read to check who may see it: the caller has just submitted it (or, with a
        request id it used before, it is the task that request id made for this principal)."""
        task, created = await self.submit_task(request, principal)
        return task, created, self._follow(task.task_id, 0, principal)

    async def _follow(
        self, task_id: str, after_sequence: int, principal: Principal
    ) -> AsyncIterator[list[task_pb2.TaskEvent]]:
        """The events of a task the caller may see, after `after_sequence`, until the terminal one."""
        with self._watching(task_id):
            sequence = after_sequence
            quiet_wait = 1.0
            events = await self.store.wait_events(task_id, sequence, timeout=0)
            while True:
                for index, event in enumerate(events):
                    if event.type in TERMINAL_EVENTS:
                        yield events[: index + 1]
                        return
                if events:
                    yield events
                    sequence = events[-1].sequence
                    quiet_wait = 1.0
                else:
                    task = await self._header(task_id, principal)
                    if task.status in TERMINAL and task.last_sequence <= sequence:
                        return
                    if task.last_sequence > sequence:  # stored, not yet here: look again soon
                        quiet_wait = 1.0
                events = await self.store.wait_events(task_id, sequence, timeout=quiet_wait)
                if not events:
                    quiet_wait = min(2 * quiet_wait, MAX_QUIET_WAIT_SECONDS)

    async def _sample_forever(self, interval: float = 5.0) -> None:
        """Refresh the gauges: queue depth by priority, tasks in flight, watchers, breakers."""
        while True:
            self.metrics.in_flight.set(self.dispatcher.in_flight)
            self.metrics.watchers.set(sum(self._watchers.values()))
            for protocol, state in self.breakers.states().items():
                self.metrics.breaker_state.labels(protocol).set(BREAKER_VALUES.get(state, 0))
            for protocol, waiting in self.admission.waiting.items():
                self.metrics.capacity_waiters.labels(protocol).set(waiting)
            self.metrics.capacity_kept.set(self.admission.kept_count)
            await self._sample_capacity()
            try:
                depth = await self.store.queue_depth_by_priority()
            except McpError:
                depth = None
            if depth is not None:
                self.metrics.queue_depth.clear()
                for priority, count in depth.items():
                    self.metrics.queue_depth.labels(str(priority)).set(count)
            await asyncio.sleep(interval)

    async def _sample_capacity(self) -> None:
        try:
            use = {a: Resources.decode(u) for a, u in (await self.store.capacity_in_use()).items()}
        except McpError:
            return
        for name in self.directory.known_names():
            for instance in self.directory.instances(name):
                capacity = Resources.of_capacity(instance.capacity)
                used = use.get(instance.address, Resources())
                for resource, offered, held in zip(RESOURCES, capacity.amounts, used.amounts):
                    self.metrics.instance_capacity.labels(instance.address, resource).set(offered)
                    self.metrics.instance_in_use.labels(instance.address, resource).set(held)

    def page_size(self, requested: int) -> int:
        if requested < 0:
            raise InvalidArgument(
                "page_size must not be negative",
                violations=[FieldViolation("page_size", "must be 0 (default) or positive")],
            )
        return min(requested or 50, self.settings.limits.max_page_size)


def _require(field: str, value: str) -> None:
    if not value:
        raise InvalidArgument(f"{field} is required", violations=[FieldViolation(field, "is required")])
