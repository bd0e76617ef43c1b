"""A task whose log holds large events (a plugin streaming big progress) reads back through every
watch, to a client that keeps gRPC's default 4 MB receive limit: before, a batch of such events
(WatchTaskEvents, SubmitAndWatchTask) or one event past the limit failed the server's send with
RESOURCE_EXHAUSTED on every try, so no client could follow the task past it. Both stores."""

from __future__ import annotations

import pytest

from mcp_sdk.proto import task_pb2
from mcp_server.settings import Limits
from mcp_server.state.common import EVENTS_PAGE_BYTES
from tests.conftest import client_for
from tests.helpers import create, step, workflow

pytestmark = pytest.mark.asyncio
PROGRESS = task_pb2.TASK_EVENT_TYPE_PROGRESS


def chatty(workflow_id: str, n: int, size: int) -> dict[str, object]:
    flood = step("talk", "chatter", f"{{'n': {n}, 'size': {size}}}")
    flood["step"]["stream"] = True
    return workflow(workflow_id, flood)


async def every_watch(client, task_id: str) -> dict[str, list[task_pb2.TaskEvent]]:
    request = task_pb2.WatchTaskRequest(task_id=task_id)
    per_event = [e async for e in client.tasks.WatchTask(request)]
    messages = [m async for m in client.tasks.WatchTaskEvents(request)]
    assert all(m.ByteSize() <= 1024 * 1024 + 4096 for m in messages)
    return {"WatchTask": per_event, "WatchTaskEvents": [e for m in messages for e in m.events]}


async def test_a_log_of_large_progress_events_reads_back_through_every_watch(server_factory, store_url):
    client = client_for(await server_factory(store_url))
    await create(client, chatty("big-progress", 12, 600_000))  # 7 MB of progress, each event within the limit
    messages = [
        m async for m in client.tasks.SubmitAndWatchTask(task_pb2.SubmitTaskRequest(workflow_id="big-progress"))
    ]
    assert len(messages) > 1 and all(m.ByteSize() <= 1024 * 1024 + 64 * 1024 for m in messages)
    live = [e for m in messages for e in m.events]
    assert live[-1].type == task_pb2.TASK_EVENT_TYPE_COMPLETED
    task_id = messages[0].submitted.task.task_id
    for name, log in {"SubmitAndWatchTask": live, **await every_watch(client, task_id)}.items():
        assert [e.sequence for e in log] == list(range(1, len(log) + 1)), name
        progress = [e for e in log if e.type == PROGRESS]
        assert [e.message for e in progress] == [f"message {i}" for i in range(12)], name
        assert all(len(e.data.fields["filler"].string_value) == 600_000 for e in progress), name


async def test_an_event_past_the_limit_keeps_its_small_fields_and_names_what_it_left_out(server_factory, store_url):
    running = await server_factory(store_url, limits=Limits(max_event_bytes=256 * 1024))
    client = client_for(running)
    await create(client, chatty("huge-progress", 3, 400_000))
    messages = [
        m async for m in client.tasks.SubmitAndWatchTask(task_pb2.SubmitTaskRequest(workflow_id="huge-progress"))
    ]
    task_id = messages[0].submitted.task.task_id
    live = [e for m in messages for e in m.events]
    assert live[-1].type == task_pb2.TASK_EVENT_TYPE_COMPLETED
    for name, log in {"SubmitAndWatchTask": live, **await every_watch(client, task_id)}.items():
        progress = [e for e in log if e.type == PROGRESS]
        assert [e.message for e in progress] == [f"message {i}" for i in range(3)], name
        for event in progress:
            fields = event.data.fields
            assert event.ByteSize() <= 256 * 1024 and "filler" not in fields, name
            assert [v.string_value for v in fields["truncated_fields"].list_value.values] == ["filler"]
            assert fields["truncated_bytes"].number_value > 400_000 and "fraction" in fields
    task = (await client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=task_id))).task
    assert task.status == task_pb2.TASK_STATUS_COMPLETED
    stored = await running.orchestrator.store.tasks.read_events(task_id, 0)  # bounded as made, not only as sent
    assert max(e.ByteSize() for e in stored) <= 256 * 1024 and len(stored) == task.last_sequence


async def test_a_read_of_a_log_of_large_events_ends_past_a_page_of_bytes(server_factory, store_url):
    """Events may be 1 MB each: a page of 1,000 was up to 1 GB read at once, by every watcher
    that started behind. A read now ends after the event that takes it to EVENTS_PAGE_BYTES, and
    a watcher reads on from there, page by page, missing nothing."""
    running = await server_factory(store_url)
    client = client_for(running)
    await create(client, chatty("paged-progress", 15, 600_000))  # 9 MB of progress
    messages = [
        m async for m in client.tasks.SubmitAndWatchTask(task_pb2.SubmitTaskRequest(workflow_id="paged-progress"))
    ]
    task_id = messages[0].submitted.task.task_id
    tasks = running.orchestrator.store.tasks
    pages, after = [], 0
    while page := await tasks.read_events(task_id, after):
        pages.append(page)
        after = page[-1].sequence
    sizes = [sum(e.ByteSize() for e in page) for page in pages]
    assert len(pages) == 3, sizes  # 9 MB in pages that end past 4 MB
    for page, size in zip(pages[:-1], sizes):
        assert size >= EVENTS_PAGE_BYTES > size - page[-1].ByteSize()
    assert [e.sequence for page in pages for e in page] == list(range(1, after + 1))
    late = await every_watch(client, task_id)  # watchers that start at the beginning, behind
    for name, log in late.items():
        assert [e.sequence for e in log] == list(range(1, after + 1)), name
