"""TaskRunner: run one task from its snapshot to a terminal state.

A fresh task and a task taken over after a crash run the same way: `resume_from` replays
the plan tree, skipping every node the snapshot records as completed, so finished steps are
never called again and the step that was in flight runs again with the same idempotency key.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from google.rpc import status_pb2

from mcp_sdk.proto import task_pb2
from mcp_server.engine import adaptive, mapping, parallel, sequence, step, supervise
from mcp_server.engine.context import NodeFailed, RunContext, code_number, now
from mcp_server.engine.event_types import E
from mcp_server.engine.executor import execute
from mcp_server.engine.logcontext import task_id_var
from mcp_server.engine.payload import Payload
from mcp_server.engine.plan import Plan
from mcp_server.engine.ports import EventListener, ProtocolCaller, TaskStore
from mcp_server.errors import LeaseLost, Unavailable
from mcp_server.settings import Limits

log = logging.getLogger(__name__)
NODE_KINDS = (adaptive, mapping, parallel, sequence, step, supervise)  # imported so that each registers its runner


class TaskRunner:
    """Runs tasks with one protocol caller and one store."""

    def __init__(
        self,
        caller: ProtocolCaller,
        store: TaskStore,
        replica_id: str = "",
        listeners: Sequence[EventListener] = (),
        limits: Limits | None = None,
        start_write_delay: float = 0.0,
    ) -> None:
        self.caller = caller
        self.start_write_delay = start_write_delay
        self.limits = limits or Limits()
        self.store = store
        self.replica_id = replica_id
        self.listeners = tuple(listeners)

    async def resume_from(
        self, snapshot: task_pb2.Task, plan: Plan, lease_token: int, cancel_reason: dict[str, str] | None = None
    ) -> bytes:
        """Run the task in `snapshot` to its end; return the live part of its header as last
        written (see state.common.live_part): its final state, once written.

        Cancelling the coroutine with a reason in `cancel_reason["reason"]` marks the task
        CANCELLED; cancelling it without one (server shutdown) leaves it RUNNING for another
        replica or a restart to resume. Raises LeaseLost if another replica took it over.
        """
        task = snapshot
        task_id_var.set(task.task_id)
        ctx = RunContext(
            task=task,
            store=self.store,
            caller=self.caller,
            lease_token=lease_token,
            task_input=await self._input(task),
            listeners=self.listeners,
            limits=self.limits,
            start_write_delay=self.start_write_delay,
        )
        task.ClearField("input_data")  # held once, by the run's input payload
        if task.step_count:
            await ctx.restore()
        # A lease taken over from a replica that died (or one that ran it before) is a resumption,
        # even if that replica died before writing anything: its call may have reached a plugin.
        resumed = task.status == task_pb2.TASK_STATUS_RUNNING or lease_token > 1
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
        try:
            async with asyncio.timeout(plan.task_timeout):
                result = await execute(plan.root, plan.root.id, ctx.task_input, ctx, {})
            ctx.result = result.output
            self._finish(ctx, task_pb2.TASK_STATUS_COMPLETED, E.TASK_EVENT_TYPE_COMPLETED, "OK", "completed")
        except NodeFailed as exc:
            self._finish(ctx, task_pb2.TASK_STATUS_FAILED, E.TASK_EVENT_TYPE_FAILED, exc.code, exc.message)
        except TimeoutError:
            self._finish(
                ctx,
                task_pb2.TASK_STATUS_FAILED,
                E.TASK_EVENT_TYPE_FAILED,
                "DEADLINE_EXCEEDED",
                f"the task timeout of {plan.task_timeout:g}s ran out",
            )
        except asyncio.CancelledError:
            reason = (cancel_reason or {}).get("reason")
            if reason is None:
                raise
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()  # handled: the CANCELLED state is written below
            self._finish(ctx, task_pb2.TASK_STATUS_CANCELLED, E.TASK_EVENT_TYPE_CANCELLED, "CANCELLED", reason)
        except LeaseLost:
            log.warning("task %s: lease %d lost; another replica owns it now", task.task_id, lease_token)
            raise
        except Exception as exc:  # a bug must fail its task, never leave it RUNNING forever
            log.exception("task %s: internal error", task.task_id)
            self._finish(
                ctx,
                task_pb2.TASK_STATUS_FAILED,
                E.TASK_EVENT_TYPE_FAILED,
                "INTERNAL",
                f"internal error: {type(exc).__name__}: {exc}",
            )
        finally:
            ctx.cancel_delayed_flush()
        await ctx.checkpoint()
        return ctx.written_live

    async def _input(self, task: task_pb2.Task) -> Payload:
        """The task's input: inline in the task, or in its value store when it is large."""
        if not task.input_ref.sha256:
            return Payload.of_struct(task.input_data)
        values = await self.store.read_values(task.task_id, [task.input_ref.sha256])
        if task.input_ref.sha256 not in values:
            raise Unavailable(f"task {task.task_id}: its input {task.input_ref.sha256} is missing from the store")
        return Payload.of_bytes(values[task.input_ref.sha256])

    @staticmethod
    def _finish(ctx: RunContext, status: int, event: int, code: str, message: str) -> None:
        task = ctx.task
        task.status = status  # type: ignore[assignment]
        task.end_time.CopyFrom(now())
        if code != "OK":
            task.error.CopyFrom(status_pb2.Status(code=code_number(code), message=message))
        data: dict[str, Any] = {"code": code}
        ctx.emit(event, message=message, data=data)
