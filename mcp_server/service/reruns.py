"""RerunTask: a new task from a finished one, keeping what completed before the chosen step
(engine/reruns.py says which steps), stored with those steps in one write and run like any task."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence

from mcp_sdk.proto import task_pb2
from mcp_server.auth import ANONYMOUS_ADMIN, Principal
from mcp_server.engine.event_types import E
from mcp_server.engine.events import make_event, now
from mcp_server.engine.paths import node_at
from mcp_server.engine.payload import Payload
from mcp_server.engine.plan import Plan, RecoverPlan
from mcp_server.engine.plans import PlanCache
from mcp_server.engine.ports import Kept, QueueGroup, TaskStore
from mcp_server.engine.records import task_input
from mcp_server.engine.reruns import (
    Step,
    first_changed_agent,
    first_missing,
    first_unfinished,
    kept_steps,
    read_steps,
    recover_cuts,
    rerun_records,
)
from mcp_server.engine.value_chunks import with_chunks
from mcp_server.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from mcp_server.service.access import require, visible_task
from mcp_server.service.cancel_on import CANCEL_ON_LABELS, cancel_on_labels
from mcp_server.service.concurrency import queue_group
from mcp_server.service.submission import Submission, check_input, check_input_schema, request_fingerprint
from mcp_server.settings import Settings
from mcp_server.state.common import TERMINAL

# a rerun as Submission.store takes it: task, first event, fingerprint, values, what it keeps,
# queue group, concurrency strategy
Prepared = tuple[task_pb2.Task, task_pb2.TaskEvent, str, dict[str, bytes], Kept, QueueGroup, int]


class Reruns:
    def __init__(self, settings: Settings, tasks: TaskStore, plans: PlanCache, submission: Submission) -> None:
        self.settings = settings
        self.tasks = tasks
        self.plans = plans
        self.submission = submission

    async def rerun_task(
        self,
        request: task_pb2.RerunTaskRequest,
        principal: Principal = ANONYMOUS_ADMIN,
        labels: Mapping[str, str] | None = None,
    ) -> tuple[task_pb2.Task, bool]:
        """Store the rerun (see RerunTask in task.proto for what is kept, and what is refused)
        and queue it, or start it here; return it (BASIC) and whether it is new. `labels` are
        added to the source's (a bulk action marks its reruns)."""
        require("task_id", request.task_id)
        if request.HasField("input"):
            if not request.from_step_path:
                raise InvalidArgument(
                    "input needs from_step_path: it is what that step receives",
                    violations=[FieldViolation("input", "set from_step_path to the step that receives it")],
                )
            check_input("input", request.input, self.settings.limits)
        self.submission.check_request_id(request.request_id)
        self.submission.rate_limiter.take(principal.name)
        try:
            prepared = await self._prepare(request, principal, labels or {})
        except (InvalidArgument, NotFound, FailedPrecondition):
            if (earlier := await self.submission.retried(request, principal)) is not None:
                return earlier, False
            raise
        await self.submission.take_shared_rate(principal.name)
        return await self.submission.store(*prepared)

    async def _prepare(
        self, request: task_pb2.RerunTaskRequest, principal: Principal, labels: Mapping[str, str]
    ) -> Prepared:
        """The checks of a rerun, and what `Submission.store` is given to store it."""
        source = await visible_task(self.tasks, request.task_id, principal)
        if source.status not in TERMINAL:
            status = task_pb2.TaskStatus.Name(source.status).removeprefix("TASK_STATUS_")
            raise FailedPrecondition(
                f"task {source.task_id} is {status}: only a finished task can be rerun",
                reason="TASK_NOT_FINISHED",
                violations=[FieldViolation("task_id", f"the task is {status}; wait for it to end, or cancel it")],
                metadata={"task_id": source.task_id, "status": status},
            )
        steps = read_steps(await self.tasks.read_steps(source.task_id, 0, source.step_count))
        chosen = self._chosen(request, source, steps)
        version = request.workflow_version or source.workflow_version
        if not await self.submission.workflows.live_version(source.workflow_id, version):
            raise NotFound(  # deleted: nothing new starts from it (its tasks still run)
                f"workflow {source.workflow_id!r} (version {version}) not found",
                reason="WORKFLOW_NOT_FOUND",
                violations=[FieldViolation("workflow_version", "no such version (or it was deleted)")],
                metadata={"workflow_id": source.workflow_id},
            )
        plan = await self.plans.get(source.workflow_id, version)
        ran = (
            plan
            if version == source.workflow_version
            else await self.plans.get(source.workflow_id, source.workflow_version)
        )
        cuts = recover_cuts(steps, chosen, ran.root) if any(s.path == chosen for s in steps) else None
        if cuts is not None and cuts.in_clean_up:
            _check_clean_up(cuts.in_clean_up, plan, version)
        kept = kept_steps(steps, chosen, cuts) if cuts is not None else []
        if version != source.workflow_version and (
            (missing := first_missing(plan.root, kept)) is not None
            or (missing := first_changed_agent(ran.root, plan.root, kept)) is not None
        ):
            path, why = missing
            raise InvalidArgument(
                f"workflow {source.workflow_id!r} version {version} cannot keep step {path}: {why}",
                reason="RERUN_STEP_MISSING",
                violations=[FieldViolation("workflow_version", f"step {path}: {why}")],
                metadata={"step_path": path},
            )
        if version != source.workflow_version and plan.input_schema is not None:
            await check_input_schema(plan, (await task_input(self.tasks, source)).python(), "input_data")
        if request.HasField("input"):
            self._check_input_kind(request, steps)
        task, values = self._new_task(request, source, chosen, kept, version, labels)
        again = ""
        if cuts is not None and cuts.in_clean_up:  # cancelled from the start: it runs the clean-up again
            task.cancel_request.reason = source.cancel_request.reason or source.error.message
            task.cancel_request.time.CopyFrom(task.create_time)
            again = f"; it runs the clean-up of the cancel ({task.cancel_request.reason}) again"
        await self._label_cancel_on(task, plan, source)
        if plan.queue_timeout is not None:  # a rerun waits to start as its workflow allows
            task.queue_deadline.FromNanoseconds(task.create_time.ToNanoseconds() + int(plan.queue_timeout * 1e9))
        refs = [ref for step in kept for ref in (step.state.input_ref, step.state.output_ref)]
        digests = sorted(await with_chunks(self.tasks, source.task_id, refs) | _input_digest(source))
        event = make_event(
            task.task_id,
            1,
            E.TASK_EVENT_TYPE_QUEUED,
            message=f"queued with priority {task.priority}: a rerun of {source.task_id} from {chosen},"
            f" {len(kept)} steps kept{again}",
            data={"rerun_of": source.task_id, "from_step_path": chosen, "kept_steps": len(kept)},
        )
        records = rerun_records(steps, kept, chosen, plan.root)
        task.step_count = len(records)
        group, task.concurrency_key = self._group(plan, source)
        kept_records = Kept(source.task_id, records, digests)
        strategy = plan.concurrency.strategy if plan.concurrency else 0
        return task, event, request_fingerprint(request), values, kept_records, group, strategy

    @staticmethod
    def _group(plan: Plan, source: task_pb2.Task) -> tuple[QueueGroup, str]:
        """The rerun's queue group: its source's concurrency key value (same input, labels and
        owner); evaluated afresh when the source had none and its input is inline."""
        if plan.concurrency is not None and (source.concurrency_key or source.input_ref.sha256):
            key = source.concurrency_key or source.owner
            return QueueGroup.of_key(plan.workflow_id, key, plan.concurrency.max_running), key
        return queue_group(plan, source.input_data, source.labels, source.owner)

    async def _label_cancel_on(self, task: task_pb2.Task, plan: Plan, source: task_pb2.Task) -> None:
        """The rerun's cancel_on labels are those of the version it runs, over its source's input."""
        for label in [label for label in task.labels if label.startswith(CANCEL_ON_LABELS)]:
            del task.labels[label]
        if plan.cancel_on:
            task.labels.update(cancel_on_labels(plan, (await task_input(self.tasks, source)).struct()))

    @staticmethod
    def _chosen(request: task_pb2.RerunTaskRequest, source: task_pb2.Task, steps: Sequence[Step]) -> str:
        """The step to rerun from: the one asked for, which must be in the task; else, for a task
        that did not complete, its first step that did not; else its first step (from the start)."""
        if request.from_step_path:
            if not any(s.path == request.from_step_path for s in steps):
                raise InvalidArgument(
                    f"task {source.task_id} has no step {request.from_step_path!r}",
                    reason="STEP_NOT_FOUND",
                    violations=[FieldViolation("from_step_path", "is not the path of a step of the task")],
                    metadata={"task_id": source.task_id},
                )
            return request.from_step_path
        if source.status != task_pb2.TASK_STATUS_COMPLETED and (path := first_unfinished(steps)) is not None:
            return path
        return steps[0].path if steps else ""

    @staticmethod
    def _check_input_kind(request: task_pb2.RerunTaskRequest, steps: Sequence[Step]) -> None:
        state = next(s.state for s in steps if s.path == request.from_step_path)
        if state.kind == "step" and request.input.WhichOneof("kind") != "struct_value":
            raise InvalidArgument(
                f"step {state.path} calls a protocol, which receives an object",
                violations=[FieldViolation("input", "must be an object for a step that calls a protocol")],
            )

    def _new_task(
        self,
        request: task_pb2.RerunTaskRequest,
        source: task_pb2.Task,
        chosen: str,
        kept: Sequence[Step],
        version: int,
        labels: Mapping[str, str],
    ) -> tuple[task_pb2.Task, dict[str, bytes]]:
        """The rerun's header (same owner, input, priority and labels as the source) and the
        large values it stores itself (an edited input above the inline limit)."""
        task = task_pb2.Task(
            task_id=uuid.uuid4().hex,
            workflow_id=source.workflow_id,
            workflow_version=version,
            status=task_pb2.TASK_STATUS_PENDING,
            priority=source.priority,
            request_id=request.request_id,
            labels={**source.labels, **labels},
            create_time=now(),
            last_sequence=1,
            owner=source.owner,
            rerun_of=source.task_id,
            rerun_from_step_path=chosen,
        )
        if source.input_ref.sha256:
            task.input_ref.CopyFrom(source.input_ref)
        else:
            task.input_data.CopyFrom(source.input_data)
        values: dict[str, bytes] = {}
        if request.HasField("input"):
            given = Payload.of_value(request.input)
            if given.size > self.settings.limits.inline_value_bytes:
                values[given.sha256] = given.serialized()
                task.rerun_input_ref.CopyFrom(
                    task_pb2.ValueRef(
                        size_bytes=given.size, sha256=given.sha256, step_path=chosen, field=task_pb2.VALUE_FIELD_INPUT
                    )
                )
            else:
                task.rerun_input.CopyFrom(request.input)
        return task, values


def _check_clean_up(handler: str, plan: Plan, version: int) -> None:
    """A rerun from inside the clean-up of a cancel runs it again: the version it runs must clean
    up at that recover node too."""
    node_path = handler.rsplit("/", 1)[0]
    node = node_at(plan.root, node_path)
    if not isinstance(node, RecoverPlan) or not node.on_cancel or f"{node_path}/{node.handler.id}" != handler:
        raise FailedPrecondition(
            f"step {handler} ran as the clean-up of a cancel, which a rerun runs again; version {version}"
            f" of workflow {plan.workflow_id!r} does not clean up there (no recover node {node_path} with"
            " on_cancel and that handler)",
            reason="RERUN_FROM_CLEAN_UP",
            violations=[FieldViolation("workflow_version", f"does not clean up at {node_path}")],
            metadata={"step_path": node_path},
        )


def _input_digest(source: task_pb2.Task) -> set[str]:
    return {source.input_ref.sha256} if source.input_ref.sha256 else set()
