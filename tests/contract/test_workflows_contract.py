"""The WorkflowStore contract: every backend (SQLite, one Redis node, a Redis Cluster) behaves the same."""

from __future__ import annotations

import sqlite3

import pytest

from mcp_sdk.proto import workflow_pb2
from mcp_server.state import open_store

pytestmark = pytest.mark.asyncio


async def test_workflow_versions_are_numbered_and_immutable(store):
    first = await store.workflows.create_workflow(workflow_pb2.Workflow(workflow_id="w", description="1"))
    second = await store.workflows.create_workflow(workflow_pb2.Workflow(workflow_id="w", description="2"))
    assert (first.version, second.version) == (1, 2)
    assert (await store.workflows.get_workflow("w")).description == "2"
    assert (await store.workflows.get_workflow("w", 1)).description == "1"
    assert await store.workflows.get_workflow("w", 3) is None
    assert await store.workflows.delete_workflow("w") == 2
    assert await store.workflows.get_workflow("w") is None
    assert await store.workflows.delete_workflow("w") == 0  # deleted once


async def test_a_deleted_version_is_read_only_by_the_tasks_that_ran_it_and_numbers_go_on(store):
    workflows = store.workflows
    await workflows.create_workflow(workflow_pb2.Workflow(workflow_id="d", description="1"))
    await workflows.create_workflow(workflow_pb2.Workflow(workflow_id="d", description="2"))
    await workflows.create_workflow(workflow_pb2.Workflow(workflow_id="kept", description="k"))
    assert (await workflows.live_version("d"), await workflows.live_version("d", 1)) == (2, 1)
    assert await workflows.delete_workflow("d") == 2

    assert await workflows.get_workflow("d", 1) is None and await workflows.get_workflow("d") is None
    assert (await workflows.live_version("d"), await workflows.live_version("d", 1)) == (0, 0)
    assert [w.workflow_id for w in (await workflows.list_workflows(10, ""))[0]] == ["kept"]
    deleted = await workflows.get_workflow("d", 1, deleted_too=True)
    assert deleted.description == "1" and deleted.HasField("delete_time")
    assert await workflows.get_workflow("d", 3, deleted_too=True) is None

    sneaked = workflow_pb2.Workflow(workflow_id="d", description="3")
    sneaked.delete_time.GetCurrentTime()  # the server's to set
    again = await workflows.create_workflow(sneaked)
    assert again.version == 3 and not again.HasField("delete_time")  # a version names one definition for good
    assert (await workflows.live_version("d"), await workflows.live_version("d", 2)) == (3, 0)
    assert (await workflows.get_workflow("d")).description == "3"
    assert not (await workflows.get_workflow("d", 3, deleted_too=True)).HasField("delete_time")
    assert [w.workflow_id for w in (await workflows.list_workflows(10, ""))[0]] == ["d", "kept"]
    assert await workflows.delete_workflow("d") == 1  # only the one not deleted yet
    assert (await workflows.get_workflow("d", 2, deleted_too=True)).description == "2"


async def test_an_event_s_subscribers_are_the_latest_live_versions_that_name_it(store):
    workflows = store.workflows

    def on(workflow_id: str, *events: str) -> workflow_pb2.Workflow:
        return workflow_pb2.Workflow(
            workflow_id=workflow_id, triggers=[workflow_pb2.EventTrigger(event=e) for e in events]
        )

    await workflows.create_workflow(on("b", "paid", "paid", "shipped"))  # a name twice: one entry
    await workflows.create_workflow(on("a", "paid"))
    await workflows.create_workflow(on("c", "shipped"))
    assert await workflows.subscribers("paid") == [("a", 1), ("b", 1)]
    assert await workflows.subscribers("shipped") == [("b", 1), ("c", 1)]
    assert await workflows.subscribers("nothing") == []

    await workflows.create_workflow(on("b", "shipped"))  # version 2 no longer takes `paid`
    await workflows.create_workflow(on("a", "paid"))  # version 2 still does
    assert await workflows.subscribers("paid") == [("a", 2)]
    assert await workflows.subscribers("shipped") == [("b", 2), ("c", 1)]
    await workflows.delete_workflow("c")
    assert await workflows.subscribers("shipped") == [("b", 2)]
    await workflows.create_workflow(on("c", "shipped"))  # made again after its delete
    assert await workflows.subscribers("shipped") == [("b", 2), ("c", 2)]
    await workflows.create_workflow(on("b", "paid"))  # version 3 takes `paid` again, after a read dropped it
    assert await workflows.subscribers("paid") == [("a", 2), ("b", 3)]
    assert await workflows.subscribers("shipped") == [("c", 2)]


async def test_an_sqlite_file_from_before_deletions_were_kept_gets_their_column(tmp_path):
    path = tmp_path / "old.db"
    store = await open_store(f"sqlite:///{path}")
    await store.workflows.create_workflow(workflow_pb2.Workflow(workflow_id="w", description="1"))
    await store.close()
    with sqlite3.connect(path) as db:  # as a server before this one left it
        db.execute("ALTER TABLE workflows DROP COLUMN deleted_at")
    store = await open_store(f"sqlite:///{path}")
    try:
        assert await store.workflows.live_version("w") == 1
        assert await store.workflows.delete_workflow("w") == 1
        assert (await store.workflows.get_workflow("w", 1, deleted_too=True)).HasField("delete_time")
    finally:
        await store.close()
