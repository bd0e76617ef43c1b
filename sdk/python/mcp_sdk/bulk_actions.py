"""The client's bulk action methods: cancel or rerun many tasks in the background, on the server
(see bulk.proto). Unlike the passes of bulk.py, which this client makes call by call, an action
goes on when the client goes away, and on another replica when its own dies."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from collections.abc import Mapping, Sequence

from mcp_sdk.connection import Connection
from mcp_sdk.proto import bulk_pb2, task_pb2
from mcp_sdk.task_methods import set_times

KINDS = {
    "cancel": bulk_pb2.BULK_ACTION_KIND_CANCEL,
    "rerun": bulk_pb2.BULK_ACTION_KIND_RERUN,
    "delete": bulk_pb2.BULK_ACTION_KIND_DELETE,
}


def task_selection(
    task_ids: Sequence[str] = (),
    *,
    statuses: Sequence[task_pb2.TaskStatus | str] = (),
    workflow_id: str = "",
    owner: str = "",
    labels: Mapping[str, str] | None = None,
    created_after: dt.datetime | None = None,
    created_before: dt.datetime | None = None,
) -> bulk_pb2.TaskSelection:
    """A TaskSelection: `task_ids`, or a filter (aware datetimes for the times)."""
    selection = bulk_pb2.TaskSelection(
        task_ids=list(task_ids),
        statuses=list(statuses),
        workflow_id=workflow_id,
        owner=owner,
        labels=dict(labels or {}),
    )
    set_times(selection, created_after=created_after, created_before=created_before)
    return selection


class BulkActionMethods(Connection):
    async def start_bulk_action(
        self,
        kind: str,
        selection: bulk_pb2.TaskSelection,
        *,
        reason: str = "",
        workflow_version: int = 0,
        max_tasks: int = 0,
        request_id: str | None = None,
        from_step_path: str = "",
    ) -> bulk_pb2.BulkAction:
        """Start cancelling ("cancel"), rerunning ("rerun", from `from_step_path` if given, on
        `workflow_version` if given) or deleting ("delete") every task of `selection` (see
        task_selection) on the server; returns the action (RUNNING) at once. Safe to repeat: a
        request id is generated when none is given."""
        request = bulk_pb2.StartBulkActionRequest(
            kind=KINDS[kind],
            selection=selection,
            reason=reason,
            workflow_version=workflow_version,
            max_tasks=max_tasks,
            request_id=request_id or uuid.uuid4().hex,
            from_step_path=from_step_path,
        )
        action: bulk_pb2.BulkAction = await self._call(self.bulk_actions.StartBulkAction, request)
        return action

    async def get_bulk_action(self, action_id: str) -> bulk_pb2.BulkAction:
        action: bulk_pb2.BulkAction = await self._call(
            self.bulk_actions.GetBulkAction, bulk_pb2.GetBulkActionRequest(action_id=action_id)
        )
        return action

    async def list_bulk_actions(self, page_size: int = 100, page_token: str = "") -> bulk_pb2.ListBulkActionsResponse:
        """One page of actions, newest first; pass `next_page_token` back for the next."""
        reply: bulk_pb2.ListBulkActionsResponse = await self._call(
            self.bulk_actions.ListBulkActions,
            bulk_pb2.ListBulkActionsRequest(page_size=page_size, page_token=page_token),
        )
        return reply

    async def abort_bulk_action(self, action_id: str, reason: str = "") -> bulk_pb2.BulkAction:
        action: bulk_pb2.BulkAction = await self._call(
            self.bulk_actions.AbortBulkAction, bulk_pb2.AbortBulkActionRequest(action_id=action_id, reason=reason)
        )
        return action

    async def wait_bulk_action(
        self, action_id: str, timeout: float | None = None, poll: float = 0.25
    ) -> bulk_pb2.BulkAction:
        """The action once it has ended (DONE or ABORTED), asking every `poll` seconds; TimeoutError
        after `timeout` seconds."""
        give_up = None if timeout is None else time.monotonic() + timeout
        while True:
            action = await self.get_bulk_action(action_id)
            if action.state != bulk_pb2.BULK_ACTION_STATE_RUNNING:
                return action
            if give_up is not None and time.monotonic() >= give_up:
                raise TimeoutError(f"bulk action {action_id} still running after {timeout} s")
            await asyncio.sleep(poll)
