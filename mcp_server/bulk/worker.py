"""The bulk action worker every replica runs: it claims the running actions due (each under a
lease, so one replica works on an action at a time and a dead replica's actions pass to another)
and acts on their tasks a page at a time, recording after each page where it got to.

Each task is acted on once however often a page is worked on (a crash between acting and
recording): a cancel of a finished task does nothing, and a rerun's request_id is derived from
the action and the task. A page of a filtered selection is recorded before its tasks are acted
on, and a page worked on again is that one, not a new listing: acting changes what a filter
matches (a cancelled task is no longer RUNNING, a deleted one is gone), and the counts would
miss the tasks the lost page had acted on. A rerun refused for now (a rate limit, a full queue,
the store away) is tried again when the refusal says, from that task on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from enum import Enum
from functools import partial

from mcp_sdk.proto import bulk_pb2, task_pb2
from mcp_server.auth import Principal
from mcp_server.engine.ports import BulkActionStore, BulkRecord, TaskFilter, TaskStore
from mcp_server.errors import McpError, ResourceExhausted, Unavailable
from mcp_server.service.access import micros
from mcp_server.state.common import TERMINAL, now_seconds

log = logging.getLogger(__name__)

BULK_LABEL = "mcp/bulk-action"
PAGE = 100
AT_ONCE = 8  # tasks of a page acted on together
WORKING_AT_ONCE = 4  # actions a replica works on at once
TICK_SECONDS = 0.5
FAILURES_KEPT = 20
PURGE_EVERY_SECONDS = 60.0
RETRY_LATER_SECONDS = 1.0
SKIPPED_REASONS = frozenset({"TASK_NOT_FOUND", "TASK_NOT_FINISHED"})

K = bulk_pb2.BulkActionKind
CancelSoon = Callable[[str, str], Awaitable[object]]
Observe = Callable[[str, str], None]  # (kind: cancel, rerun or delete; outcome: succeeded, skipped or failed)
Delete = Callable[[str, Principal, bool], Awaitable[bool]]
Rerun = Callable[[task_pb2.RerunTaskRequest, Principal, Mapping[str, str]], Awaitable[tuple[task_pb2.Task, bool]]]


class Outcome(Enum):
    SUCCEEDED = "succeeded"
    SKIPPED = "skipped"
    FAILED = "failed"
    LATER = "later"  # refused for now: try this task again later


@dataclass(frozen=True)
class Acted:
    outcome: Outcome
    message: str = ""
    retry_after: float = 0.0


@dataclass(frozen=True)
class Page:
    """The next tasks of an action, whether more follow, and where the work goes on from: `start`
    is the index of the first in a list of task ids, else the listing's page token after the page
    (its tasks are then kept in the cursor until they are all acted on). `listed`: read from a
    listing now, not yet recorded."""

    task_ids: list[str]
    more: bool
    start: int | None = None
    after: str = ""
    listed: bool = False

    def cursor_after(self, acted: int) -> str:
        """The cursor to record once the first `acted` tasks of the page are acted on."""
        if self.start is not None:
            return str(self.start + acted)
        if acted >= len(self.task_ids):
            return self.after
        return json.dumps({"ids": self.task_ids[acted:], "after": self.after, "more": self.more})


class BulkWorker:
    def __init__(
        self,
        store: BulkActionStore,
        tasks: TaskStore,
        cancel_soon: CancelSoon,
        rerun: Rerun,
        delete: Delete,
        started: asyncio.Event,
        lease_seconds: float,
        retention_seconds: float,
        observe: Observe = lambda kind, outcome: None,
    ) -> None:
        self.store = store
        self.tasks = tasks
        self.cancel_soon = cancel_soon
        self.rerun = rerun
        self.delete = delete
        self.started = started
        self.lease_ms = int(lease_seconds * 1000)
        self.retention_ms = int(retention_seconds * 1000)
        self.observe = observe
        self._working: dict[str, asyncio.Task[None]] = {}  # by action id

    async def run_forever(self) -> None:
        """Claim due actions while fewer than WORKING_AT_ONCE are worked on here, each worked on in
        a task of its own (a long action does not hold up one started after it); purge ended ones."""
        purged_at = 0.0
        try:
            while True:
                with contextlib.suppress(McpError):  # the store is away: try again next tick
                    await self.claim_due()
                    if time.monotonic() - purged_at > PURGE_EVERY_SECONDS:
                        await self.store.purge_bulk_actions(int(now_seconds() * 1000) - self.retention_ms, 100)
                        purged_at = time.monotonic()
                # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel that comes
                # as the event is set, and the worker would not stop
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(TICK_SECONDS):
                        await self.started.wait()
                self.started.clear()
        finally:
            for working in self._working.values():
                working.cancel()

    async def claim_due(self) -> int:
        """Claim the actions due now, as many as there is room for here, and start working on
        each; how many."""
        room = WORKING_AT_ONCE - len(self._working)
        if room <= 0:
            return 0
        records = await self.store.claim_bulk_actions(int(now_seconds() * 1000), self.lease_ms, room)
        for record in records:
            if record.action_id not in self._working:
                working = asyncio.create_task(self._work_logged(record), name=f"bulk action {record.action_id}")
                self._working[record.action_id] = working
                working.add_done_callback(partial(self._worked, record.action_id))
        return len(records)

    def _worked(self, action_id: str, _: asyncio.Task[None]) -> None:
        self._working.pop(action_id, None)

    async def _work_logged(self, record: BulkRecord) -> None:
        try:
            await self.work(record)
        except Exception:  # worked on again when its lease ends
            log.exception(
                "bulk action %s: a page failed; it is tried again within %d ms", record.action_id, self.lease_ms
            )

    async def work(self, record: BulkRecord | None) -> None:
        """Act on the action's tasks a page at a time, recording each page, until it is done,
        must wait (a refusal for now), or a write finds it aborted or claimed elsewhere."""
        while record is not None and record.running:
            action = bulk_pb2.BulkAction.FromString(record.data)
            principal = Principal(record.owner, frozenset({"admin"}) if record.admin else frozenset())
            page = await self._page(action, record)
            if page.listed and page.task_ids:  # recorded before anything of it is acted on
                record = await self.store.save_bulk_action(
                    replace(record, cursor=page.cursor_after(0)), int(now_seconds() * 1000) + self.lease_ms
                )
                if record is None or not record.running:
                    return
            later, more, done_here = 0.0, page.more and bool(page.task_ids), 0
            pending = page.task_ids
            if action.max_tasks:
                pending = pending[: max(action.max_tasks - action.matched, 0)]
            # AT_ONCE tasks at a time; counted in order up to the first refused for now, from
            # which the work goes on later (those after it acted on again then: once each still)
            for start in range(0, len(pending), AT_ONCE):
                chunk = pending[start : start + AT_ONCE]
                results = await asyncio.gather(*(self._act(action, task_id, principal) for task_id in chunk))
                for task_id, acted in zip(chunk, results):
                    if acted.outcome is Outcome.LATER:
                        later = max(acted.retry_after, 0.05)
                        break
                    _count(action, task_id, acted)
                    self.observe(_kind(action), acted.outcome.value)
                    done_here += 1
                if later:
                    break
            cursor = page.cursor_after(done_here) if page.task_ids else record.cursor
            now = now_seconds()
            action.update_time.FromNanoseconds(int(now * 1e9))
            done = not later and (not more or bool(action.max_tasks and action.matched >= action.max_tasks))
            if done:
                action.state = bulk_pb2.BULK_ACTION_STATE_DONE
                action.end_time.CopyFrom(action.update_time)
            due_ms = int((now + later) * 1000) if later else int(now * 1000) + self.lease_ms
            record = await self.store.save_bulk_action(
                replace(record, data=action.SerializeToString(), cursor=cursor, running=not done), due_ms
            )
            if later:
                return  # claimed again when the refusal said

    async def _page(self, action: bulk_pb2.BulkAction, record: BulkRecord) -> Page:
        selection = action.selection
        if selection.task_ids:
            start = int(record.cursor or 0)
            return Page(list(selection.task_ids[start : start + PAGE]), start + PAGE < len(selection.task_ids), start)
        if record.cursor.startswith("{"):  # a page recorded before it was acted on: its tasks left
            kept = json.loads(record.cursor)
            return Page(list(kept["ids"]), bool(kept["more"]), after=str(kept["after"]))
        where = TaskFilter(
            tuple(selection.statuses),
            selection.workflow_id,
            selection.owner,
            tuple(sorted(selection.labels.items())),
            micros(selection, "created_after"),
            micros(selection, "created_before"),
        )
        listed = await self.tasks.list_tasks(PAGE, record.cursor, where)
        after = listed.after[-1] if listed.after else record.cursor
        return Page([task.task_id for task in listed.tasks], listed.more, after=after, listed=True)

    async def _act(self, action: bulk_pb2.BulkAction, task_id: str, principal: Principal) -> Acted:
        try:
            if action.kind == K.BULK_ACTION_KIND_CANCEL:
                return await self._cancel(action, task_id, principal)
            if action.kind == K.BULK_ACTION_KIND_DELETE:  # a task gone already: skipped
                deleted = await self.delete(task_id, principal, True)
                return Acted(Outcome.SUCCEEDED if deleted else Outcome.SKIPPED)
            request = task_pb2.RerunTaskRequest(
                task_id=task_id,
                request_id=f"bulk:{action.action_id}:{task_id}",
                workflow_version=action.workflow_version,
                from_step_path=action.from_step_path,
            )
            await self.rerun(request, principal, {BULK_LABEL: action.action_id})
            return Acted(Outcome.SUCCEEDED)
        except ResourceExhausted as refused:  # a rate limit, a full queue or store: for now
            return Acted(
                Outcome.LATER, retry_after=float(refused.metadata.get("retry_after_seconds", RETRY_LATER_SECONDS))
            )
        except Unavailable:
            return Acted(Outcome.LATER, retry_after=RETRY_LATER_SECONDS)
        except McpError as refused:
            if refused.reason in SKIPPED_REASONS:
                return Acted(Outcome.SKIPPED)
            return Acted(Outcome.FAILED, refused.message)

    async def _cancel(self, action: bulk_pb2.BulkAction, task_id: str, principal: Principal) -> Acted:
        task = await self.tasks.get_task(task_id)
        if task is None or not (principal.is_admin or task.owner == principal.name):
            return Acted(Outcome.SKIPPED)
        mark = f"bulk action {action.action_id}: "
        if task.status in TERMINAL:  # cancelled by this action already (a page worked on again) counts as done
            ours = task.status == task_pb2.TASK_STATUS_CANCELLED and mark in task.error.message
            return Acted(Outcome.SUCCEEDED if ours else Outcome.SKIPPED)
        await self.cancel_soon(task_id, mark + (action.reason or "cancelled in bulk"))
        return Acted(Outcome.SUCCEEDED)


def _kind(action: bulk_pb2.BulkAction) -> str:
    return bulk_pb2.BulkActionKind.Name(action.kind).removeprefix("BULK_ACTION_KIND_").lower()


def _count(action: bulk_pb2.BulkAction, task_id: str, acted: Acted) -> None:
    action.matched += 1
    if acted.outcome is Outcome.SUCCEEDED:
        action.succeeded += 1
    elif acted.outcome is Outcome.SKIPPED:
        action.skipped += 1
    else:
        action.failed += 1
        if len(action.failures) < FAILURES_KEPT:
            action.failures.add(task_id=task_id, message=acted.message[:1000])
