"""What every port's contract suite shares: a store of each backend, and tasks to put in it."""

from __future__ import annotations

import uuid

import pytest

from mcp_sdk.proto import task_pb2
from mcp_server.engine.events import make_event, now
from mcp_server.engine.ports import Checkpoint, StepRecord
from mcp_server.state import open_store

E = task_pb2.TaskEventType


@pytest.fixture(params=["sqlite", "redis", "redis-cluster"])
def any_store_url(request):
    """Every store: the embedded one, one Redis node, a real Redis Cluster."""
    if request.param == "sqlite":
        return "sqlite://:memory:"
    return request.getfixturevalue("redis_url" if request.param == "redis" else "cluster_url")


@pytest.fixture
async def store(any_store_url):
    opened = await open_store(any_store_url)
    yield opened
    await opened.close()


def new_task(
    workflow_id: str = "wf", priority: int = 0, request_id: str = "", owner: str = ""
) -> tuple[task_pb2.Task, task_pb2.TaskEvent]:
    task = task_pb2.Task(
        task_id=uuid.uuid4().hex,
        workflow_id=workflow_id,
        workflow_version=1,
        priority=priority,
        owner=owner,
        status=task_pb2.TASK_STATUS_PENDING,
        request_id=request_id,
        create_time=now(),
        last_sequence=1,
    )
    task.input_data.update({"n": 1})
    return task, make_event(task.task_id, 1, E.TASK_EVENT_TYPE_QUEUED)


def checkpoint(
    task: task_pb2.Task,
    token: int,
    status: int,
    events: list[task_pb2.TaskEvent],
    steps: list[StepRecord] | None = None,
    values: dict[str, bytes] | None = None,
) -> Checkpoint:
    live = task_pb2.Task(
        status=status, last_sequence=max([e.sequence for e in events], default=1), step_count=len(steps or [])
    )
    return Checkpoint(task.task_id, token, status, live.SerializeToString(), steps or [], events, values or {})


async def claim_and_complete(store, task: task_pb2.Task, lease_seconds: float) -> None:
    """Claim `task` and write it COMPLETED with its terminal event."""
    claimed, token = await store.queue.claim_task("me", lease_seconds)
    await store.tasks.save_checkpoint(
        checkpoint(
            claimed, token, task_pb2.TASK_STATUS_COMPLETED, [make_event(task.task_id, 2, E.TASK_EVENT_TYPE_COMPLETED)]
        )
    )


def ids(page) -> list[str]:
    return [t.task_id for t in page.tasks]
