"""Listings of large things page by bytes as well as by count: six workflows of about 1 MB each
(well within every limit) made the first ListWorkflows page 5.8 MB, past gRPC's message limit,
so the server's send failed and no client (the console, the CLI) could list workflows at all;
schedules with large inputs did the same to ListSchedules. Both stores, a client with gRPC's
default receive limit."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from mcp_sdk.proto import schedule_pb2, workflow_pb2
from tests.conftest import client_for
from tests.helpers import create, error_reason, step, violations, workflow
from tests.integration.test_schedules import a_schedule, seconds

pytestmark = pytest.mark.asyncio
LIMIT = 4 * 1024 * 1024


def large_workflow(workflow_id: str) -> workflow_pb2.Workflow:
    steps = [step(f"s{i}", "echo", "{'v': '" + "x" * 2000 + "'}") for i in range(480)]
    return workflow(workflow_id, {"id": "root", "sequence": {"children": steps}})


async def every_page(call: Any, request: Any, items: str) -> list[list[Any]]:
    """The pages of a List call to its end, each asserted non-empty and within the default limit."""
    pages: list[list[Any]] = []
    while True:
        page = await call(request)
        assert getattr(page, items) and page.ByteSize() < LIMIT
        pages.append(list(getattr(page, items)))
        if not page.next_page_token:
            return pages
        request.page_token = page.next_page_token


async def test_large_workflows_and_schedules_list_in_pages_that_fit(server_factory, store_url):
    client = client_for(await server_factory(store_url))
    for n in range(6):
        await create(client, large_workflow(f"big-{n}"))
    await create(client, workflow("small", step("s", "echo")))
    pages = await every_page(client.workflows.ListWorkflows, workflow_pb2.ListWorkflowsRequest(), "workflows")
    assert [w.workflow_id for p in pages for w in p] == [f"big-{n}" for n in range(6)] + ["small"]
    assert len(pages) >= 2

    for n in range(6):
        schedule = a_schedule("small", schedule_id=f"sched-{n}", every=[seconds(3600)], paused=True)
        schedule.action.input_data.update({"blob": "y" * 1_000_000})
        await client.schedules.CreateSchedule(schedule_pb2.CreateScheduleRequest(schedule=schedule))
    pages = await every_page(client.schedules.ListSchedules, schedule_pb2.ListSchedulesRequest(), "schedules")
    assert [s.schedule_id for p in pages for s in p] == [f"sched-{n}" for n in range(6)] and len(pages) >= 2


async def test_a_workflow_too_large_to_send_back_is_refused_naming_the_limit(client):
    schema = {
        "type": "object",
        "description": "z" * 4_150_000,
    }  # a wait's schema: a Struct, bounded by the message only
    wf = workflow("too-big", {"id": "root", "wait": {"signal": "go", "schema": schema}})
    assert 4 * 1024 * 1024 - 64 * 1024 < wf.ByteSize() < 4 * 1024 * 1024 - 1024  # the request itself fits
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await create(client, wf)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and error_reason(err.value) == "WORKFLOW_TOO_LARGE"
    assert "MCP_LIMIT_MAX_MESSAGE_BYTES" in err.value.details() and "workflow" in violations(err.value)
    wf.root.wait.schema["description"] = "z" * 1000
    assert (await create(client, wf)).version == 1
