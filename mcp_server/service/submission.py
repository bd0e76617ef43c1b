"""Submitting tasks: checked, stored and queued (or started here at once), then, for RunTask
and SubmitAndWatchTask, followed to their end."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from google.protobuf import duration_pb2, struct_pb2

from mcp_sdk.proto import task_pb2
from mcp_server.auth import ANONYMOUS_ADMIN, Principal
from mcp_server.engine.compiler.durations import MAX_DURATION_SECONDS
from mcp_server.engine.dispatcher import Dispatcher
from mcp_server.engine.event_types import E
from mcp_server.engine.events import make_event, now
from mcp_server.engine.payload import Payload, struct_to_python
from mcp_server.engine.plan import Plan
from mcp_server.engine.plans import PlanCache
from mcp_server.engine.ports import (
    EventListener,
    Kept,
    OwnerShare,
    QueueGroup,
    TaskQueue,
    TaskStore,
    UnitGate,
    WorkflowStore,
)
from mcp_server.engine.schema_defaults import with_defaults
from mcp_server.engine.schemas import problems_off_loop
from mcp_server.engine.values import ValueTooDeep, dict_to_struct, message_depth
from mcp_server.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound, ResourceExhausted
from mcp_server.ratelimit import RateLimiter
from mcp_server.service.access import require, visible_task
from mcp_server.service.cancel_on import cancel_on_labels
from mcp_server.service.cancelling import Cancelling
from mcp_server.service.concurrency import (
    CANCEL_IN_PROGRESS,
    CANCEL_NEWEST,
    CONCURRENCY_LIMIT,
    full_for_newest,
    queue_group,
)
from mcp_server.service.watching import Watching
from mcp_server.settings import Limits, Settings
from mcp_server.state.common import TERMINAL, RequestIdReused, assemble, fixed_part, request_task_id
from mcp_server.task_views import TaskViews

MAX_REQUEST_ID = 128
# rate-limit keys every submission takes a unit of when an operator has put a limit on them
# (docs/rate-limits.md): every principal's submissions together, and one principal's
SUBMISSIONS_KEY = "submit"
PRINCIPAL_SUBMISSIONS_PREFIX = "submit:"


class Submission:
    def __init__(
        self,
        settings: Settings,
        workflows: WorkflowStore,
        queue: TaskQueue,
        tasks: TaskStore,
        plans: PlanCache,
        dispatcher: Dispatcher,
        views: TaskViews,
        watching: Watching,
        listeners: Sequence[EventListener],
        cancelling: Cancelling,
        units: UnitGate,
    ) -> None:
        self.settings = settings
        self.workflows = workflows
        self.queue = queue
        self.tasks = tasks
        self.plans = plans
        self.dispatcher = dispatcher
        self.views = views
        self.watching = watching
        self.listeners = listeners
        self.cancelling = cancelling
        self.units = units
        self.rate_limiter = RateLimiter(settings.limits.submissions_per_second)
        self.owner_share = OwnerShare(settings.limits.max_queued_per_owner, settings.limits.max_queued_bytes_per_owner)

    async def submit_task(
        self,
        request: task_pb2.SubmitTaskRequest,
        principal: Principal = ANONYMOUS_ADMIN,
        limited: bool = True,
        follow: bool = False,
    ) -> tuple[task_pb2.Task, bool]:
        """Queue a run owned by `principal`. The same request_id returns the first task
        (created=False). Raises ResourceExhausted past the principal's submission rate (unless
        not `limited`: a schedule's fires, which are their own rate). `follow`: a watcher of the
        new task starts here at once (see TaskQueue.create_leased)."""
        require("workflow_id", request.workflow_id)
        if limited:
            self.rate_limiter.take(principal.name)
        try:
            plan, version, group, key, input_data, labels = await self._admit(request, principal)
        except (InvalidArgument, NotFound, FailedPrecondition):
            if (earlier := await self.retried(request, principal)) is not None:
                return earlier, False
            raise
        if limited:
            await self.take_shared_rate(principal.name)
        task_id = request_task_id(principal.name, request.request_id) if request.request_id else uuid.uuid4().hex
        task = task_pb2.Task(
            task_id=task_id,
            workflow_id=plan.workflow_id,
            workflow_version=version,
            input_data=input_data,
            status=task_pb2.TASK_STATUS_PENDING,
            priority=request.priority,
            request_id=request.request_id,
            labels=labels,
            create_time=now(),
            last_sequence=1,
            owner=principal.name,
            concurrency_key=key,
        )
        waits_at_most = seconds_of(request.queue_timeout) if request.HasField("queue_timeout") else plan.queue_timeout
        if waits_at_most is not None:
            task.queue_deadline.FromNanoseconds(task.create_time.ToNanoseconds() + int(waits_at_most * 1e9))
        values = {}
        given = Payload.of_struct(input_data)
        if given.size > self.settings.limits.inline_value_bytes:  # stored once, beside the task, read by reference
            values[given.sha256] = given.serialized()
            task.ClearField("input_data")
            task.input_ref.CopyFrom(task_pb2.ValueRef(size_bytes=given.size, sha256=given.sha256))
        event = make_event(task.task_id, 1, E.TASK_EVENT_TYPE_QUEUED, message=f"queued with priority {task.priority}")
        fingerprint = request_fingerprint(request)
        strategy = plan.concurrency.strategy if plan.concurrency else 0
        return await self.store(task, event, fingerprint, values, group=group, strategy=strategy, follow=follow)

    async def take_shared_rate(self, principal: str) -> None:
        """One unit of the submission rate limits an operator has put, shared by every replica:
        `submit` (everyone's submissions) and `submit:<principal>` (or the template `submit:*`:
        each principal on its own), both at once or neither. A key without a limit costs no
        round trip. Raises ResourceExhausted RATE_LIMITED, with when to try again."""
        mine = PRINCIPAL_SUBMISSIONS_PREFIX + principal
        if self.units.limit_key(SUBMISSIONS_KEY) is None and self.units.limit_key(mine) is None:
            return
        grant = await self.units.take_units([(SUBMISSIONS_KEY, 1), (mine, 1)])
        if grant.granted:
            return
        if grant.too_large:
            raise ResourceExhausted(
                f"the rate limit {grant.key!r} grants less than one submission at a time (limit + burst < 1):"
                " no submission can pass it",
                reason="RATE_LIMITED",
                metadata={"key": grant.key},
            )
        raise ResourceExhausted(
            f"past the submission rate limit {grant.key!r}; retry in {grant.retry_after:.2f}s",
            reason="RATE_LIMITED",
            metadata={"key": grant.key, "retry_after_seconds": f"{grant.retry_after:.3f}"},
        )

    async def check_submittable(self, request: task_pb2.SubmitTaskRequest, principal: Principal) -> None:
        """Raise what submit_task would raise for `request` from `principal`, without storing
        anything (a schedule's action is checked so when it is stored)."""
        require("workflow_id", request.workflow_id)
        await self._admit(request, principal)

    async def _admit(
        self, request: task_pb2.SubmitTaskRequest, principal: Principal
    ) -> tuple[Plan, int, QueueGroup, str, struct_pb2.Struct, dict[str, str]]:
        """The checks of a submission: its plan and version, its queue group and concurrency key,
        its input (with the defaults its input schema declares, when its workflow fills them), and
        its labels (with those its workflow's cancel_on puts on it)."""
        self._check_request(request)
        version = await self.workflows.live_version(request.workflow_id, request.workflow_version)
        if not version:
            which = f"version {request.workflow_version}" if request.workflow_version else "any version"
            raise NotFound(
                f"workflow {request.workflow_id!r} ({which}) not found",
                reason="WORKFLOW_NOT_FOUND",
                metadata={"workflow_id": request.workflow_id},
            )
        plan = await self.plans.get(request.workflow_id, version)  # compiled once per version, then cached
        input_data = request.input_data
        if plan.input_schema is not None:
            given = struct_to_python(input_data)
            if plan.fill_input_defaults and (filled := with_defaults(plan.input_schema.source, given)) is not given:
                given, input_data = filled, dict_to_struct(filled)
                check_input("input_data", input_data, self.settings.limits)  # the defaults count too
            await check_input_schema(plan, given, "input_data")
        group, key = queue_group(plan, input_data, request.labels, principal.name)
        labels = dict(request.labels)
        if plan.cancel_on:
            labels.update(cancel_on_labels(plan, input_data))
        return plan, version, group, key, input_data, labels

    async def retried(
        self, request: task_pb2.SubmitTaskRequest | task_pb2.RerunTaskRequest, principal: Principal
    ) -> task_pb2.Task | None:
        """The task (BASIC) an earlier send of `request` made, for a retry (its reply was lost)
        that a check refuses now although it passed then: the workflow or the version deleted
        since, a stricter input schema, a lower limit, the rerun's source deleted. A retry gets
        its task whatever changed, as when nothing did. The same request_id with another
        request: RequestIdReused. Only a refused request with a request_id pays this read."""
        if not request.request_id or len(request.request_id) > MAX_REQUEST_ID:
            return None
        rerun = isinstance(request, task_pb2.RerunTaskRequest)
        found = await self.queue.task_of_request(principal.name, request.request_id, rerun)
        if found is None:
            return None
        if found.fingerprint != request_fingerprint(request):
            raise RequestIdReused(request.request_id, found.task.task_id)
        return self.views.basic(found.task)

    def _check_request(self, request: task_pb2.SubmitTaskRequest) -> None:
        check_input("input_data", request.input_data, self.settings.limits)
        self.check_request_id(request.request_id)
        if request.HasField("queue_timeout") and not 0 < seconds_of(request.queue_timeout) <= MAX_DURATION_SECONDS:
            raise InvalidArgument(
                "queue_timeout must be positive and at most 7 days",
                violations=[FieldViolation("queue_timeout", f"must be between 1 ns and {MAX_DURATION_SECONDS} s")],
            )

    @staticmethod
    def check_request_id(request_id: str) -> None:
        if len(request_id) > MAX_REQUEST_ID:
            raise InvalidArgument(
                "request_id is too long",
                violations=[FieldViolation("request_id", f"at most {MAX_REQUEST_ID} characters")],
            )

    async def store(
        self,
        task: task_pb2.Task,
        event: task_pb2.TaskEvent,
        fingerprint: str,
        values: dict[str, bytes],
        kept: Kept | None = None,
        group: QueueGroup | None = None,
        strategy: int = 0,
        follow: bool = False,
    ) -> tuple[task_pb2.Task, bool]:
        """Store a new task with its first event (and, for a rerun, what it keeps) and queue it,
        or, with room here and nothing waiting in the queue, start it on this replica at once,
        leased as it is stored (no trip through the queue, no claim round trip). A concurrency
        key's strategy (see ConcurrencyStrategy) then cancels the new task, or the key's older
        ones. `follow`: see TaskQueue.create_leased. Returns the task (BASIC) and whether it is new."""
        holder = self.settings.replica_id if self.dispatcher.has_room() and self.dispatcher.queue_seen_empty() else ""
        members = await self.queue.group_members(group) if group and group.max_running and strategy else []
        refused = strategy == CANCEL_NEWEST and group is not None and full_for_newest(members, group.max_running)
        stored, created, token = await self.queue.create_leased(
            task,
            event,
            "" if refused else holder,
            self.settings.lease_seconds,
            self.settings.limits.max_queue_length,
            fingerprint,
            values,
            kept,
            group,
            follow,
            self.owner_share,
        )
        if created:
            for listener in self.listeners:
                listener(stored, event)
            if refused:
                why = f"{CONCURRENCY_LIMIT}: concurrency key {stored.concurrency_key!r} is full"
                ended = await self.cancelling.cancel_queued(stored.task_id, why)
                if ended is None:  # claimed meanwhile
                    await self.cancelling.cancel_soon(stored.task_id, why)
                stored = ended or stored
            elif token:
                self.dispatcher.adopt(stored, token)
            else:
                self.dispatcher.wake()
            if strategy == CANCEL_IN_PROGRESS:
                key = stored.concurrency_key
                why = f"{CONCURRENCY_LIMIT}: replaced by task {stored.task_id} of concurrency key {key!r}"
                for member in members:
                    await self.cancelling.cancel_soon(member.task_id, why)
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
        async for _ in self.watching.watch_task_batches(task.task_id, task.last_sequence, principal):
            pass
        return self.views.basic(await visible_task(self.tasks, task.task_id, principal)), created

    async def submit_and_watch(
        self, request: task_pb2.SubmitTaskRequest, principal: Principal = ANONYMOUS_ADMIN
    ) -> tuple[task_pb2.Task, bool, AsyncIterator[list[task_pb2.TaskEvent]]]:
        """submit_task, and the task's events from its first, as watch_task_batches gives them.
        No header is read to check who may see it: the caller has just submitted it (or, with a
        request id it used before, it is the task that request id made for this principal)."""
        task, created = await self.submit_task(request, principal, follow=True)
        return task, created, self.watching.follow(task.task_id, 0, principal, batched=True)


def seconds_of(duration: duration_pb2.Duration) -> float:
    return duration.seconds + duration.nanos / 1e9


def request_fingerprint(request: task_pb2.SubmitTaskRequest | task_pb2.RerunTaskRequest) -> str:
    """What tells a retry of a request (the same request_id) from another request: "" without one."""
    return hashlib.sha256(request.SerializeToString(deterministic=True)).hexdigest() if request.request_id else ""


def check_input(field: str, value: struct_pb2.Struct | struct_pb2.Value, limits: Limits) -> None:
    """InvalidArgument naming `field` when the value is above the input size or depth limit."""
    size = value.ByteSize()
    if size > limits.max_input_bytes:
        raise InvalidArgument(
            f"{field} is {size} bytes; the limit is {limits.max_input_bytes}",
            violations=[FieldViolation(field, f"{size} bytes exceeds the limit of {limits.max_input_bytes}")],
            reason="INPUT_TOO_LARGE",
        )
    depth = message_depth(value, limits.max_value_depth)
    if depth > limits.max_value_depth:
        problem = str(ValueTooDeep(field, depth, limits.max_value_depth))
        raise InvalidArgument(problem, violations=[FieldViolation(field, problem)], reason="VALUE_TOO_DEEP")


async def check_input_schema(plan: Plan, given: object, field: str) -> None:
    """InvalidArgument INPUT_REJECTED, a violation per rejected part (`field.<path>`), when the
    workflow's input_schema rejects `given` (a task's input as Python); checked off the event loop."""
    if plan.input_schema is None:
        return
    problems = await problems_off_loop(plan.input_schema, given, field)
    if problems:
        raise InvalidArgument(
            f"{field} does not fit the input schema of workflow {plan.workflow_id!r} version {plan.version}:"
            f" {problems[0][0]}: {problems[0][1]}",
            violations=[FieldViolation(path, why) for path, why in problems],
            reason="INPUT_REJECTED",
            metadata={"workflow_id": plan.workflow_id, "workflow_version": str(plan.version)},
        )
