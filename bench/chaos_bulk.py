"""The promises of bulk actions (docs/bulk-actions.md "Guarantees"), for `bench.chaos_promises`.

Round after round, one action at a time (a principal runs at most 4 at once):

- **rerun**: a round of tasks that fail, then a bulk RERUN of the round's failed tasks (by its
  label). The action ends DONE having rerun each, and each task of the round has exactly one
  rerun, labelled with the action, however often the worker's replica died meanwhile;
- **cancel**: a round of tasks that make a short call and then sleep 20 s (held in memory or
  parked), then, a moment later, a bulk CANCEL of the round's unfinished tasks. The action ends
  DONE having cancelled each, and each ends CANCELLED by it.
"""

from __future__ import annotations

import asyncio
import collections
import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.chaos import TERMINAL, Replicas
from mcp_sdk.proto import bulk_pb2, bulk_pb2_grpc, task_pb2

ROUND = 12  # tasks per round
FAILING, NAPPING = "promise-failing", "promise-napping"


def workflows() -> list[dict[str, Any]]:
    """A workflow whose tasks fail, and one whose tasks nap long after a short call."""
    return [
        {
            "workflow_id": FAILING,
            "root": {"id": "boom", "step": {"protocol": "fail", "input": "{'code': 'INVALID_ARGUMENT'}"}},
        },
        {
            "workflow_id": NAPPING,
            "root": {
                "id": "root",
                "sequence": {
                    "children": [
                        {"id": "first", "step": {"protocol": "sleep", "input": "{'ms': 300}"}},
                        {"id": "nap", "sleep": {"duration": "20s"}},
                    ]
                },
            },
        },
    ]


@dataclass
class Bulk:
    """The rounds and their actions. `tasks` is the soak's own record of every task."""

    replicas: Replicas
    tasks: dict[str, str]
    rounds: list[tuple[int, str, list[str]]] = field(default_factory=list)  # (kind, action id, the round's tasks)

    async def submit_round(self, workflow_id: str, label: str) -> list[str]:
        ids = []
        for _ in range(ROUND):
            request = task_pb2.SubmitTaskRequest(workflow_id=workflow_id, request_id=uuid.uuid4().hex)
            request.labels["round"] = label
            task = (await self.replicas.call("SubmitTask", request)).task
            self.tasks[task.task_id] = workflow_id
            ids.append(task.task_id)
        return ids

    async def act(self, kind: int, label: str, statuses: Sequence[int], ids: list[str]) -> None:
        """Start the action on the round (the same request id, if it is sent again) and wait for its end."""
        request = bulk_pb2.StartBulkActionRequest(
            kind=kind,  # type: ignore[arg-type]
            selection=bulk_pb2.TaskSelection(statuses=statuses, labels={"round": label}),  # type: ignore[arg-type]
            reason="the soak's round",
            request_id=uuid.uuid4().hex,
        )
        action = await self.replicas.call("StartBulkAction", request, service=bulk_pb2_grpc.BulkActionServiceStub)
        self.rounds.append((kind, action.action_id, ids))
        await self.ended(action.action_id, timeout=120)

    async def ended(self, action_id: str, timeout: float) -> bulk_pb2.BulkAction:
        deadline = time.monotonic() + timeout
        while True:
            request = bulk_pb2.GetBulkActionRequest(action_id=action_id)
            action: bulk_pb2.BulkAction = await self.replicas.call(
                "GetBulkAction", request, service=bulk_pb2_grpc.BulkActionServiceStub
            )
            if action.state != bulk_pb2.BULK_ACTION_STATE_RUNNING or time.monotonic() > deadline:
                return action
            await asyncio.sleep(0.2)

    async def rerun_round(self) -> None:
        label = uuid.uuid4().hex[:12]
        ids = await self.submit_round(FAILING, label)
        for task_id in ids:  # each fails at once
            while (await self.get(task_id)).status not in TERMINAL:
                await asyncio.sleep(0.1)
        await self.act(bulk_pb2.BULK_ACTION_KIND_RERUN, label, [task_pb2.TASK_STATUS_FAILED], ids)

    async def cancel_round(self) -> None:
        label = uuid.uuid4().hex[:12]
        ids = await self.submit_round(NAPPING, label)
        await asyncio.sleep(random.uniform(0, 1))  # some still in their call, some napping
        unfinished = [task_pb2.TASK_STATUS_PENDING, task_pb2.TASK_STATUS_RUNNING, task_pb2.TASK_STATUS_WAITING]
        await self.act(bulk_pb2.BULK_ACTION_KIND_CANCEL, label, unfinished, ids)

    async def get(self, task_id: str) -> task_pb2.Task:
        request = task_pb2.GetTaskRequest(task_id=task_id, view=task_pb2.TASK_VIEW_BASIC)
        task: task_pb2.Task = (await self.replicas.call("GetTask", request)).task
        return task

    async def load(self, until: float) -> None:
        while time.monotonic() < until:
            await self.rerun_round()
            await self.cancel_round()


async def bulk_problems(run: Bulk) -> list[str]:
    """Each action DONE with every task of its round acted on; one rerun per failed task, each
    ended; every napping task CANCELLED by its action."""
    found = []
    for kind, action_id, ids in run.rounds:
        action = await run.ended(action_id, timeout=120)
        name = f"bulk action {action_id} ({bulk_pb2.BulkActionKind.Name(kind)})"
        counts = (action.state, action.matched, action.succeeded, action.failed)
        if counts != (bulk_pb2.BULK_ACTION_STATE_DONE, ROUND, ROUND, 0):
            found.append(
                f"{name}: {bulk_pb2.BulkActionState.Name(action.state)}, matched {action.matched},"
                f" succeeded {action.succeeded}, failed {action.failed} {[f.message for f in action.failures]}"
            )
        if kind == bulk_pb2.BULK_ACTION_KIND_RERUN:
            reruns = await run.replicas.labelled({"mcp/bulk-action": action_id})
            by_source = collections.Counter(rerun.rerun_of for rerun in reruns)
            found += [f"{name}: task {i} has {by_source[i]} reruns" for i in ids if by_source[i] != 1]
            found += [f"{name}: a rerun of {i}, not of its round" for i in set(by_source) - set(ids)]
            for rerun in reruns:
                while (task := await run.get(rerun.task_id)).status not in TERMINAL:
                    await asyncio.sleep(0.2)
                if task.status != task_pb2.TASK_STATUS_FAILED:
                    found.append(f"{name}: rerun {task.task_id} ended {task_pb2.TaskStatus.Name(task.status)}")
            continue
        why = f"bulk action {action_id}"
        for task_id in ids:
            task = await run.get(task_id)
            if task.status != task_pb2.TASK_STATUS_CANCELLED or not task.error.message.startswith(why):
                found.append(
                    f"{name}: task {task_id} ended {task_pb2.TaskStatus.Name(task.status)} {task.error.message!r}"
                )
    return found
