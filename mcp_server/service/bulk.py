"""Bulk actions: what StartBulkAction, GetBulkAction, ListBulkActions and AbortBulkAction do
(see bulk.proto). Checking and storing an action lives here; working on it, in bulk/worker.py."""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from dataclasses import replace

from mcp_sdk.proto import bulk_pb2
from mcp_server.auth import ANONYMOUS_ADMIN, Principal
from mcp_server.engine.ports import BulkActionStore, BulkRecord
from mcp_server.errors import AlreadyExists, FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from mcp_server.service.access import micros, page_size, status_violations
from mcp_server.settings import Settings
from mcp_server.state.common import now_seconds

K = bulk_pb2.BulkActionKind
KINDS = (K.BULK_ACTION_KIND_CANCEL, K.BULK_ACTION_KIND_RERUN, K.BULK_ACTION_KIND_DELETE)
TASK_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
SAVE_TRIES = 20
# what an action's work changes, and its id and times: the rest is what its start asked for
PROGRESS_FIELDS = (
    "action_id",
    "state",
    "matched",
    "succeeded",
    "skipped",
    "failed",
    "failures",
    "create_time",
    "update_time",
    "end_time",
    "abort_reason",
)


def new_action_id() -> str:
    """Ids sort by creation time (12 hex digits of milliseconds), then by chance."""
    return f"ba{int(time.time() * 1000):012x}{secrets.token_hex(6)}"


def action_not_found(action_id: str) -> NotFound:
    return NotFound(
        f"bulk action {action_id!r} not found", reason="BULK_ACTION_NOT_FOUND", metadata={"action_id": action_id}
    )


class BulkActions:
    def __init__(self, settings: Settings, store: BulkActionStore) -> None:
        self.settings = settings
        self.store = store
        self.started = asyncio.Event()  # set when an action is stored here: the worker looks at once

    async def start(
        self, request: bulk_pb2.StartBulkActionRequest, principal: Principal = ANONYMOUS_ADMIN
    ) -> bulk_pb2.BulkAction:
        """Check the request, store the action and return it; the worker does the rest."""
        selection = checked_selection(request, principal)
        now = now_seconds()
        action = bulk_pb2.BulkAction(
            action_id=new_action_id(),
            kind=request.kind,
            selection=selection,
            state=bulk_pb2.BULK_ACTION_STATE_RUNNING,
            owner=principal.name,
            reason=request.reason,
            workflow_version=request.workflow_version,
            max_tasks=request.max_tasks,
            request_id=request.request_id,
            from_step_path=request.from_step_path,
        )
        action.create_time.FromNanoseconds(int(now * 1e9))
        action.update_time.CopyFrom(action.create_time)
        if not selection.task_ids and not selection.HasField("created_before"):
            action.selection.created_before.CopyFrom(action.create_time)
        record = BulkRecord(
            action.action_id,
            principal.name,
            action.SerializeToString(),
            admin=principal.is_admin,
            request_id=request.request_id,
        )
        stored, created = await self.store.create_bulk_action(record, self.settings.bulk_max_running)
        if created:
            self.started.set()
        earlier = bulk_pb2.BulkAction.FromString(stored.data)
        if not created and not same_request(earlier, action):
            raise AlreadyExists(
                f"request_id {request.request_id!r} was used before for a different bulk action"
                f" ({earlier.action_id}): use a new one for a new action",
                reason="REQUEST_ID_REUSED",
                metadata={"request_id": request.request_id, "action_id": earlier.action_id},
            )
        return earlier

    async def get(self, action_id: str, principal: Principal = ANONYMOUS_ADMIN) -> bulk_pb2.BulkAction:
        return bulk_pb2.BulkAction.FromString((await self._visible(action_id, principal)).data)

    async def list(
        self, size: int, page_token: str, principal: Principal = ANONYMOUS_ADMIN
    ) -> tuple[list[bulk_pb2.BulkAction], str]:
        """Newest first: an admin's list holds every principal's actions, anyone else's their own."""
        if page_token and not TASK_ID.fullmatch(page_token):
            raise InvalidArgument(
                "page_token is not a token this server issued",
                violations=[FieldViolation("page_token", "pass next_page_token from the previous page, unchanged")],
            )
        wanted = page_size(size, self.settings.limits)
        owner = None if principal.is_admin else principal.name
        records = await self.store.list_bulk_actions(owner, page_token, wanted + 1)
        shown = records[:wanted]
        token = shown[-1].action_id if len(records) > wanted else ""
        return [bulk_pb2.BulkAction.FromString(r.data) for r in shown], token

    async def abort(self, action_id: str, reason: str, principal: Principal = ANONYMOUS_ADMIN) -> bulk_pb2.BulkAction:
        """Mark the action ABORTED; the replica working on it stops after the tasks in hand (its
        next write finds the version moved). An action that ended is returned as it is."""
        for _ in range(SAVE_TRIES):
            record = await self._visible(action_id, principal)
            action = bulk_pb2.BulkAction.FromString(record.data)
            if not record.running:
                return action
            action.state = bulk_pb2.BULK_ACTION_STATE_ABORTED
            action.abort_reason = reason or "aborted by request"
            action.update_time.FromNanoseconds(int(now_seconds() * 1e9))
            action.end_time.CopyFrom(action.update_time)
            if await self.store.save_bulk_action(replace(record, data=action.SerializeToString(), running=False), 0):
                return action
        raise FailedPrecondition(  # a worker wrote between every read and write: very busy; try again
            f"bulk action {action_id} changed while it was being aborted; try again", reason="BULK_ACTION_BUSY"
        )

    async def _visible(self, action_id: str, principal: Principal) -> BulkRecord:
        record = await self.store.get_bulk_action(action_id)
        if record is None or not (principal.is_admin or record.owner == principal.name):
            raise action_not_found(action_id)
        return record


def same_request(earlier: bulk_pb2.BulkAction, now: bulk_pb2.BulkAction) -> bool:
    """Whether two starts asked for the same action (a created_before the server filled in, at
    each one's start, aside)."""
    pair = [bulk_pb2.BulkAction(), bulk_pb2.BulkAction()]
    for copy, action in zip(pair, (earlier, now)):
        copy.CopyFrom(action)
        for progress in PROGRESS_FIELDS:
            copy.ClearField(progress)
    if not now.selection.task_ids and now.selection.created_before == now.create_time:
        pair[0].selection.ClearField("created_before")
        pair[1].selection.ClearField("created_before")
    return pair[0] == pair[1]


def checked_selection(request: bulk_pb2.StartBulkActionRequest, principal: Principal) -> bulk_pb2.TaskSelection:
    """The request's selection, checked (every problem at once), its task ids without repeats,
    and a non-admin's filter limited to the principal's own tasks."""
    violations: list[FieldViolation] = []
    if request.kind not in KINDS:
        violations.append(FieldViolation("kind", "must be BULK_ACTION_KIND_CANCEL, _RERUN or _DELETE"))
    given = request.selection
    selection = bulk_pb2.TaskSelection()
    selection.CopyFrom(given)
    filtered = bool(
        given.statuses
        or given.workflow_id
        or given.owner
        or given.labels
        or given.HasField("created_after")
        or given.HasField("created_before")
    )
    if given.task_ids and filtered:
        violations.append(FieldViolation("selection", "give task_ids or a filter, not both"))
    elif not given.task_ids and not filtered:
        violations.append(
            FieldViolation("selection", "name the tasks: task_ids, or at least one filter field (statuses, ...)")
        )
    violations += status_violations(given.statuses, "selection.statuses")
    for i, task_id in enumerate(given.task_ids):
        if not TASK_ID.fullmatch(task_id):
            violations.append(FieldViolation(f"selection.task_ids[{i}]", "must be 1-64 of A-Z a-z 0-9 _ -"))
    if given.owner and given.owner != principal.name and not principal.is_admin:
        violations.append(FieldViolation("selection.owner", "only an admin may act on another principal's tasks"))
    after, before = micros(given, "created_after"), micros(given, "created_before")
    if given.HasField("created_after") and given.HasField("created_before") and after >= before:
        violations.append(FieldViolation("selection.created_before", "must be after created_after"))
    if request.workflow_version and request.kind != K.BULK_ACTION_KIND_RERUN:
        violations.append(FieldViolation("workflow_version", "only a RERUN runs a workflow version"))
    if request.from_step_path and request.kind != K.BULK_ACTION_KIND_RERUN:
        violations.append(FieldViolation("from_step_path", "only a RERUN runs again from a step"))
    if violations:
        first = violations[0]
        more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
        raise InvalidArgument(f"{first.field}: {first.description}{more}", violations=violations)
    del selection.task_ids[:]
    selection.task_ids.extend(dict.fromkeys(given.task_ids))
    if filtered and not principal.is_admin:
        selection.owner = principal.name
    return selection
