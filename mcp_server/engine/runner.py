"""TaskRunner: run one task from its snapshot until it ends, or until all of it waits.

A fresh task, a task taken over after a crash and a waiting task resumed by a signal or a timer
run the same way: `resume_from` replays the plan tree, skipping every node the snapshot records
as completed, so finished steps are never called again and the step that was in flight runs
again with the same idempotency key. When every branch waits (suspensions.py), the run parks:
it writes the task WAITING with when it is due, and returns, holding nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from google.rpc import status_pb2

from mcp_sdk.proto import task_pb2
from mcp_server.engine import (
    adaptive,
    agent,
    mapping,
    parallel,
    publish,
    recover,
    sequence,
    step,
    subworkflow,
    supervise,
    waiting,
)
from mcp_server.engine.caching import NearCache
from mcp_server.engine.cancel_cleanup import clean_up
from mcp_server.engine.context import NodeFailed, RunContext
from mcp_server.engine.event_types import E
from mcp_server.engine.events import now
from mcp_server.engine.executor import execute
from mcp_server.engine.logcontext import task_id_var
from mcp_server.engine.paused_runs import PausedRuns
from mcp_server.engine.payload import Payload
from mcp_server.engine.plan import Plan
from mcp_server.engine.ports import (
    EventListener,
    EventPublisher,
    ProtocolCaller,
    SignalRecord,
    StepCache,
    TaskStore,
    UnitGate,
    WaitStore,
)
from mcp_server.engine.queue_deadlines import expired_unstarted
from mcp_server.engine.records import stored_value, task_input
from mcp_server.engine.schemas import rejection
from mcp_server.engine.step_ends import code_number
from mcp_server.engine.suspensions import Suspensions
from mcp_server.errors import CancelRequested, LeaseLost, Unavailable
from mcp_server.settings import Limits

log = logging.getLogger(__name__)
# imported so that each registers its runner
NODE_KINDS = (adaptive, agent, mapping, parallel, publish, recover, sequence, step, subworkflow, supervise, waiting)
_NOT_COME_BACK_TO = "the task ended before its run, resumed after a restart, came back to this step"


class TaskRunner:
    """Runs tasks with one protocol caller and one store. A run whose waits all end later than
    `park_horizon` seconds from now parks instead of waiting in memory."""

    def __init__(
        self,
        caller: ProtocolCaller,
        store: TaskStore,
        replica_id: str = "",
        listeners: Sequence[EventListener] = (),
        limits: Limits | None = None,
        start_write_delay: float = 0.0,
        waits: WaitStore | None = None,
        park_horizon: float = 2.0,
        rate_limits: UnitGate | None = None,
        step_cache: StepCache | None = None,
    ) -> None:
        self.caller = caller
        self.start_write_delay = start_write_delay
        self.limits = limits or Limits()
        self.store = store
        self.waits = waits
        self.park_horizon = park_horizon
        self.rate_limits = rate_limits
        self.step_cache = NearCache(step_cache) if step_cache is not None else None
        self.publisher: EventPublisher | None = None  # set once the event service exists
        self.replica_id = replica_id
        self.listeners = tuple(listeners)
        self.paused_runs = PausedRuns()  # runs waiting out a store that refuses their writes

    async def resume_from(
        self,
        snapshot: task_pb2.Task,
        plan: Plan,
        lease_token: int,
        cancel_reason: dict[str, str] | None = None,
        signals: asyncio.Event | None = None,
        ending: asyncio.Event | None = None,
        lease_stale: Callable[[], bool] | None = None,
    ) -> bytes:
        """Run the task in `snapshot` until it ends or parks; return the live part of its header as
        last written (see state.common.live_part).

        Cancelling the coroutine with a reason in `cancel_reason["reason"]` marks the task
        CANCELLED; cancelling it without one (server shutdown) leaves it RUNNING for another
        replica or a restart to resume. `signals` is set when the task has new signals to take
        in. `ending` is set once the run has ended or parked and only its last write remains (a
        cancel then lets that write land rather than interrupt it). `lease_stale` says, before
        each node, whether the lease went unrenewed so long that the run must stop. Raises
        LeaseLost if another replica took it over, or may (`lease_stale`).
        """
        task = snapshot
        task_id_var.set(task.task_id)
        ctx = RunContext(
            task=task,
            store=self.store,
            caller=self.caller,
            lease_token=lease_token,
            task_input=await task_input(self.store, task),
            listeners=self.listeners,
            limits=self.limits,
            start_write_delay=self.start_write_delay,
            suspensions=Suspensions(self.park_horizon),
            rerun_input=await self._rerun_input(task),
            rate_limits=self.rate_limits,
            step_cache=self.step_cache,
            publisher=self.publisher,
            paused_runs=self.paused_runs,
        )
        if lease_stale is not None:
            ctx.lease_stale = lease_stale
        task.ClearField("input_data")  # held once, by the run's input payload
        if task.HasField("cancel_request"):  # a clean-up an earlier life began: finish it, never the body
            cancel_reason = {} if cancel_reason is None else cancel_reason
            cancel_reason.setdefault("reason", task.cancel_request.reason)
        if task.step_count:
            await ctx.restore()
        if late := expired_unstarted(task, lease_token, time.time_ns()):
            cancel_reason = {"reason": late}  # taken past its queue deadline: it ends, never started
        else:
            self._start(ctx, lease_token)
        follower = None
        if self.waits is not None:  # any run may park: on waits and sleeps, or on rate limits
            if plan.waits:
                await self._take_in_signals(ctx)
            me = asyncio.current_task()
            if me is not None:

                def park() -> None:
                    me.cancel()

                ctx.suspensions.request_park = park
            if signals is not None and plan.waits:
                follower = asyncio.get_running_loop().create_task(self._follow_signals(ctx, signals))
        abandoned = True  # until the run ends or parks here: it stops (lease lost or running out, the server stopping)
        try:
            await self._run(ctx, plan, cancel_reason)
            abandoned = False
        finally:
            ctx.suspensions.request_park = None  # nothing waits any more: the last write must not be cancelled
            ctx.cancel_delayed_flush(abandoned)
            if follower is not None:
                follower.cancel()
        if ending is not None:
            ending.set()
        try:
            await ctx.checkpoint()
        except CancelRequested as first:
            await self._cancelled_after_all(ctx, plan, first.message)
        return ctx.written_live

    async def _cancelled_after_all(self, ctx: RunContext, plan: Plan, reason: str) -> None:
        """The store refused the run's completion: a cancel request was stored first (one a
        replica that was away, or a nudge that was lost, left the run to end meanwhile). What the
        store holds is what was asked: the task ends CANCELLED, after its clean-up if it has one."""
        ctx.retract_completion()
        await self._end_cancelled(ctx, plan, reason, {})
        await ctx.checkpoint()

    async def _end_cancelled(self, ctx: RunContext, plan: Plan, reason: str, marks: dict[str, str]) -> None:
        """End the task CANCELLED, after its clean-up if it has one (`marks` tells the dispatcher
        that one is under way, so that a second cancel waits for it)."""
        if plan.cleans_up_on_cancel:
            marks["cleaning_up"] = "yes"
            reason, cleaned = await clean_up(ctx, plan, reason, self.limits.cancel_cleanup_seconds)
            if cleaned:  # kept with the task (and counted by the metrics as it ends)
                ctx.task.cancel_request.outcome = cleaned
        self._finish(ctx, task_pb2.TASK_STATUS_CANCELLED, E.TASK_EVENT_TYPE_CANCELLED, "CANCELLED", reason)

    def _start(self, ctx: RunContext, lease_token: int) -> None:
        task = ctx.task
        # A lease taken over from a replica that died (or one that ran it before) is a resumption,
        # even if that replica died before writing anything: its call may have reached a plugin.
        resumed = task.status in (task_pb2.TASK_STATUS_RUNNING, task_pb2.TASK_STATUS_WAITING) or lease_token > 1
        task.status = task_pb2.TASK_STATUS_RUNNING
        if not task.HasField("start_time"):
            task.start_time.CopyFrom(now())
        ctx.emit(
            E.TASK_EVENT_TYPE_RESUMED if resumed else E.TASK_EVENT_TYPE_STARTED,
            message=("resumed from snapshot" if resumed else "started")
            + f" by {self.replica_id or 'a replica'} (lease {lease_token})",
            data={"replica": self.replica_id, "lease": lease_token},
        )
        ctx.flush_within(self.start_write_delay)

    async def _run(self, ctx: RunContext, plan: Plan, cancel_reason: dict[str, str] | None) -> None:
        """Run the plan and record how it ended (or that it parked) in the task's header and log."""
        deadline = _deadline(ctx.task, plan)
        loop = asyncio.get_running_loop()
        try:
            if (cancel_reason or {}).get("reason"):
                raise asyncio.CancelledError  # cancelled before it began (a waiting task, cancelled)
            if deadline is not None and time.time() >= deadline:
                raise TimeoutError  # it ran out while no replica ran the task: nothing is called again
            async with asyncio.timeout_at(None if deadline is None else loop.time() + deadline - time.time()):
                result = await execute(plan.root, plan.root.id, ctx.task_input, ctx, {})
                if plan.output_schema is not None:
                    await _check_result(plan, result.output)
            ctx.result = result.output
            self._finish(ctx, task_pb2.TASK_STATUS_COMPLETED, E.TASK_EVENT_TYPE_COMPLETED, "OK", "completed")
        except NodeFailed as exc:
            self._finish(ctx, task_pb2.TASK_STATUS_FAILED, E.TASK_EVENT_TYPE_FAILED, exc.code, exc.message)
        except TimeoutError:
            message = f"the task timeout of {plan.task_timeout:g}s ran out"
            self._finish(ctx, task_pb2.TASK_STATUS_FAILED, E.TASK_EVENT_TYPE_FAILED, "DEADLINE_EXCEEDED", message)
        except asyncio.CancelledError:
            reason = (cancel_reason or {}).get("reason")
            if reason is None and not ctx.suspensions.parking:
                raise
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()  # handled: the CANCELLED or WAITING state is written below
            if cancel_reason is not None and reason is not None:
                ctx.abandon_unfinished("CANCELLED", f"the task was cancelled: {reason}")
                await self._end_cancelled(ctx, plan, reason, cancel_reason)
            else:
                due = ctx.suspensions.due(deadline)
                ctx.task.status = task_pb2.TASK_STATUS_WAITING
                ctx.due_ms = int(due * 1000) if due is not None else 0
                ctx.header_changed = True
        except LeaseLost:
            log.warning("task %s: lease %d lost; another replica owns it now", ctx.task.task_id, ctx.lease_token)
            raise
        except Unavailable as exc:  # a store call the run could not wait out: not the task's failure
            log.warning(
                "task %s: stopped here by the store (%s); it resumes from its last write when its lease runs out",
                ctx.task.task_id,
                exc,
            )
            raise
        except Exception as exc:  # a bug must fail its task, never leave it RUNNING forever
            log.exception("task %s: internal error", ctx.task.task_id)
            message = f"internal error: {type(exc).__name__}: {exc}"
            self._finish(ctx, task_pb2.TASK_STATUS_FAILED, E.TASK_EVENT_TYPE_FAILED, "INTERNAL", message)

    async def _take_in_signals(self, ctx: RunContext) -> None:
        """Learn the task's signals; take in those no run has taken in yet."""
        assert self.waits is not None
        records = await self.waits.read_signals(ctx.task.task_id)
        if ctx.suspensions.parking:  # left for the next life: the write that parks sees them and queues the task
            return
        _announce_signals(ctx, ctx.suspensions.known(records, ctx.consumed_signals()))

    async def _follow_signals(self, ctx: RunContext, arrived: asyncio.Event) -> None:
        """Take in new signals whenever the dispatcher says some came (run as a task)."""
        while True:
            await arrived.wait()
            arrived.clear()
            try:
                await self._take_in_signals(ctx)
            except Unavailable as exc:  # the next poll says so again
                log.warning("task %s: cannot read its signals now: %s", ctx.task.task_id, exc)

    async def _rerun_input(self, task: task_pb2.Task) -> Payload | None:
        """A rerun's edited input for its first step (see executor.given_input), if it has one."""
        if task.rerun_input_ref.sha256:
            return Payload.of_bytes(await stored_value(self.store, task, task.rerun_input_ref.sha256))
        return Payload.of_value(task.rerun_input) if task.HasField("rerun_input") else None

    @staticmethod
    def _finish(ctx: RunContext, status: int, event: int, code: str, message: str) -> None:
        task = ctx.task
        if status != task_pb2.TASK_STATUS_CANCELLED:  # a cancel marks every unfinished step itself
            ctx.abandon_unfinished("CANCELLED", _NOT_COME_BACK_TO, earlier_lives_only=True)
        task.status = status  # type: ignore[assignment]
        task.end_time.CopyFrom(now())
        if code != "OK":
            task.error.CopyFrom(status_pb2.Status(code=code_number(code), message=message))
        data: dict[str, Any] = {"code": code}
        ctx.emit(event, message=message, data=data)


async def _check_result(plan: Plan, output: Payload) -> None:
    """Fail the task when its workflow's output_schema rejects its result (its steps are kept: a
    rerun from one of them, on a version that mends it, goes on from there)."""
    if rejected := await rejection(plan.output_schema, output.python(), "result"):
        raise NodeFailed(
            "INVALID_ARGUMENT",
            f"the result does not fit the output schema of workflow {plan.workflow_id!r} version {plan.version}:"
            f" {rejected}",
        )


def _deadline(task: task_pb2.Task, plan: Plan) -> float | None:
    """When the task's timeout runs out (Unix seconds), counted from its first start, whichever
    life of the run this is."""
    if plan.task_timeout is None:
        return None
    return task.start_time.ToNanoseconds() / 1e9 + plan.task_timeout


def _announce_signals(ctx: RunContext, records: Sequence[SignalRecord]) -> None:
    """New signals of the task, in order: each gets its SIGNAL_RECEIVED event and goes to its
    step (or is kept); written with the next checkpoint, soon."""
    for record in records:
        signal = ctx.suspensions.take_in(record, ctx.task.last_sequence + 1)  # the event's sequence
        ctx.emit(
            E.TASK_EVENT_TYPE_SIGNAL_RECEIVED,
            step_path=signal.assigned,
            flush_soon=True,
            message=f"signal {record.request.signal!r} received",
            data={
                "signal": signal.name,
                "request_id": signal.request_id,
                "step_path": signal.assigned,
                "index": record.index,
            },
        )
