"""PlanCache: each workflow version is compiled once, then reused by every task that runs it."""

from __future__ import annotations

import asyncio
import functools
from collections import OrderedDict

from mcp_server.engine.compiler import compile_workflow
from mcp_server.engine.plan import Plan
from mcp_server.engine.ports import WorkflowStore
from mcp_server.errors import NotFound
from mcp_server.settings import Settings


class PlanCache:
    """Compiled plans by (workflow_id, version); versions are immutable, so entries never go stale."""

    def __init__(self, store: WorkflowStore, settings: Settings, capacity: int = 1024) -> None:
        self.store = store
        self.settings = settings
        self.capacity = capacity
        self._plans: OrderedDict[tuple[str, int], Plan] = OrderedDict()

    async def get(self, workflow_id: str, version: int) -> Plan:
        key = (workflow_id, version)
        plan = self._plans.get(key)
        if plan is not None:
            self._plans.move_to_end(key)
            return plan
        # a deleted version too: the tasks that ran it run to their end (a submission asks
        # WorkflowStore.live_version first)
        workflow = await self.store.get_workflow(workflow_id, version, deleted_too=True)
        if workflow is None:
            raise NotFound(
                f"workflow {workflow_id!r} (version {version}) not found",
                reason="WORKFLOW_NOT_FOUND",
                metadata={"workflow_id": workflow_id},
            )
        plan = await asyncio.to_thread(  # off the event loop: a large workflow takes a while
            functools.partial(
                compile_workflow,
                workflow,
                self.settings.limits,
                default_step_timeout=self.settings.default_step_timeout,
                default_task_timeout=self.settings.default_task_timeout,
            )
        )
        self._plans[key] = plan
        if len(self._plans) > self.capacity:
            self._plans.popitem(last=False)
        return plan
