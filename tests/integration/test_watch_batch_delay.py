"""A batched watch (WatchTaskEvents, SubmitAndWatchTask) holds events that are not the task's
end up to MCP_WATCH_BATCH_DELAY for those that follow, so a quick task's steps share a message.
What it must never do: hold the end, or hold events past the delay (a client that waits to see a
step suspended before it signals would wait for ever). Both stores."""

from __future__ import annotations

import asyncio

import pytest

from mcp_sdk.proto import task_pb2
from tests.conftest import client_for
from tests.helpers import create, seq, step, workflow
from tests.integration.test_waits import signal, wait

pytestmark = pytest.mark.asyncio
E = task_pb2.TaskEventType


async def test_the_end_of_a_task_is_never_held(server_factory, store_url):
    client = client_for(await server_factory(store_url, watch_batch_delay=60.0))
    await create(client, workflow("quick", seq("root", step("a", "echo"), step("b", "echo"), step("c", "echo"))))
    async with asyncio.timeout(20):  # well under the delay: the end went out at once
        messages = [m async for m in client.tasks.SubmitAndWatchTask(task_pb2.SubmitTaskRequest(workflow_id="quick"))]
        task_id = messages[0].submitted.task.task_id
        watched = [
            m async for m in client.tasks.WatchTaskEvents(task_pb2.WatchTaskRequest(task_id=task_id, after_sequence=2))
        ]
    for received, first in (([e for m in messages for e in m.events], 1), ([e for m in watched for e in m.events], 3)):
        assert [e.sequence for e in received] == list(range(first, received[-1].sequence + 1))
        assert received[-1].type == E.TASK_EVENT_TYPE_COMPLETED
        completed = [e.step_path for e in received if e.type == E.TASK_EVENT_TYPE_STEP_COMPLETED]
        assert completed == ["root/a", "root/b", "root/c", "root"]


async def test_held_events_go_out_after_the_delay_while_the_task_waits(server_factory, store_url):
    client = client_for(await server_factory(store_url, watch_batch_delay=0.3))
    await create(client, workflow("approve", seq("root", step("draft", "echo"), wait("review", "approval"))))
    stream = client.tasks.SubmitAndWatchTask(task_pb2.SubmitTaskRequest(workflow_id="approve"))
    seen: list[task_pb2.TaskEvent] = []
    task_id = ""
    async with asyncio.timeout(20):
        async for message in stream:
            task_id = task_id or message.submitted.task.task_id
            seen += message.events
            if any(e.type == E.TASK_EVENT_TYPE_STEP_SUSPENDED for e in seen):
                break  # the task waits for the signal, which comes only once this is seen
        other = client.tasks.WatchTaskEvents(task_pb2.WatchTaskRequest(task_id=task_id))
        async for message in other:
            if any(e.type == E.TASK_EVENT_TYPE_STEP_SUSPENDED for e in message.events):
                break
        await signal(client, task_id, "approval", {"ok": True})
        async for message in stream:
            seen += message.events
    assert seen[-1].type == E.TASK_EVENT_TYPE_COMPLETED
    assert [e.sequence for e in seen] == list(range(1, seen[-1].sequence + 1))
    stream.cancel()
    other.cancel()
