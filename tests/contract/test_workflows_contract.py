"""The WorkflowStore contract: every backend (SQLite, one Redis node, a Redis Cluster) behaves the same."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest
from google.protobuf import duration_pb2

from mcp_sdk.proto import task_pb2, workflow_pb2
from mcp_server.engine.ports import EventInterest
from mcp_server.state import open_store
from tests.contract.conftest import make_event, new_task

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


def waits_for(workflow_id: str, *waits: tuple[str, int], triggers: tuple[str, ...] = ()) -> workflow_pb2.Workflow:
    """A workflow of a sequence of waits, each (event, lookback seconds), the last inside an inline
    subworkflow's recover handler."""

    def wait(event: str, lookback: int) -> workflow_pb2.Node:
        node = workflow_pb2.Node(id=f"w{event}", wait=workflow_pb2.WaitNode(event=event))
        if lookback:
            node.wait.lookback.CopyFrom(duration_pb2.Duration(seconds=lookback))
        return node

    *first, last = [wait(event, lookback) for event, lookback in waits]
    nested = workflow_pb2.Node(id="sub")
    handler = nested.subworkflow.definition.root
    handler.id = "r"
    handler.recover.body.CopyFrom(workflow_pb2.Node(id="b", sleep=workflow_pb2.SleepNode()))
    handler.recover.handler.CopyFrom(last)
    workflow = workflow_pb2.Workflow(
        workflow_id=workflow_id, triggers=[workflow_pb2.EventTrigger(event=e) for e in triggers]
    )
    workflow.root.id = "root"
    workflow.root.sequence.children.extend([*first, nested])
    return workflow


async def test_an_event_s_interest_is_its_subscribers_and_the_longest_lookback_any_version_waits_with(store):
    workflows = store.workflows
    assert await workflows.event_interest("paid") == EventInterest([], None)
    await workflows.create_workflow(waits_for("a", ("paid", 0), ("shipped", 30), ("deep", 5)))
    assert (await workflows.event_interest("paid")).lookback == 0.0  # waited for, without a lookback
    assert (await workflows.event_interest("shipped")).lookback == 30.0
    assert (await workflows.event_interest("deep")).lookback == 5.0  # inside a subworkflow's recover handler
    assert await workflows.event_interest("nothing") == EventInterest([], None)

    await workflows.create_workflow(waits_for("a", ("paid", 10), ("shipped", 0)))
    await workflows.create_workflow(waits_for("b", ("other", 0), triggers=("paid",)))
    # the longest of every version: version 1's tasks may still wait with its lookback
    assert await workflows.event_interest("paid") == EventInterest([("b", 1)], 10.0)
    assert (await workflows.event_interest("shipped")).lookback == 30.0
    await workflows.delete_workflow("a")
    await workflows.delete_workflow("b")
    assert await workflows.event_interest("paid") == EventInterest([], 10.0)  # deleted versions' tasks still run
    assert (await workflows.event_interest("deep")).lookback == 5.0


async def test_an_event_s_interest_says_whether_some_version_s_cancel_on_names_it(store):
    workflows = store.workflows
    plain = waits_for("c", ("paid", 0))
    await workflows.create_workflow(plain)
    assert not (await workflows.event_interest("order.cancelled")).cancels
    called_off = waits_for("c", ("paid", 0), triggers=("order.placed",))
    called_off.cancel_on.add(event="order.cancelled", key="input.id")
    await workflows.create_workflow(called_off)
    await workflows.create_workflow(plain)  # a later version without it: version 2's tasks may still run
    interest = await workflows.event_interest("order.cancelled")
    assert interest.cancels and interest.lookback is None and interest.subscribers == []
    await workflows.delete_workflow("c")
    assert (await workflows.event_interest("order.cancelled")).cancels  # deleted versions' tasks still run
    assert not (await workflows.event_interest("paid")).cancels
    assert (await workflows.event_interest("order.placed")).subscribers == []  # deleted: no trigger


async def test_a_store_from_before_the_record_of_waited_events_records_every_stored_version(any_store_url, tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}" if any_store_url.startswith("sqlite") else any_store_url
    store = await open_store(url)
    await store.workflows.create_workflow(waits_for("a", ("paid", 20), ("shipped", 0)))
    await store.workflows.create_workflow(waits_for("gone", ("deleted", 7)))
    await store.workflows.delete_workflow("gone")
    if url.startswith("sqlite"):  # as a server before the record left the file
        with sqlite3.connect(tmp_path / "old.db") as db:
            db.execute("DROP TABLE waited_events")
    else:  # as a server before the record left the store
        layout, redis = store.workflows.layout, store.workflows.conn.r
        await redis.delete(layout.waited_events_recorded, layout.waited_events)
    await store.close()
    store = await open_store(url)  # a replica of this build
    try:
        assert (await store.workflows.event_interest("paid")).lookback == 20.0
        assert (await store.workflows.event_interest("shipped")).lookback == 0.0
        assert (await store.workflows.event_interest("deleted")).lookback == 7.0
        assert (await store.workflows.event_interest("nothing")).lookback is None
    finally:
        await store.close()


async def test_an_sqlite_file_from_before_deletions_were_kept_gets_their_column(tmp_path):
    path = tmp_path / "old.db"
    store = await open_store(f"sqlite:///{path}")
    await store.workflows.create_workflow(workflow_pb2.Workflow(workflow_id="w", description="1"))
    await store.close()
    with sqlite3.connect(path) as db:  # as a server before this one left it
        db.execute("DROP INDEX workflows_deleted")
        db.execute("ALTER TABLE workflows DROP COLUMN deleted_at")
    store = await open_store(f"sqlite:///{path}")
    try:
        assert await store.workflows.live_version("w") == 1
        assert await store.workflows.delete_workflow("w") == 1
        assert (await store.workflows.get_workflow("w", 1, deleted_too=True)).HasField("delete_time")
    finally:
        await store.close()


@pytest.mark.parametrize("node", ["redis_url", "cluster_url"])
async def test_lookbacks_a_build_kept_among_an_event_s_subscribers_are_recorded_apart_again(request, node):
    """The build of 2026-12-03 kept each event's longest lookback as a field of the event's
    subscriber hash, where a replica of an earlier build, publishing it, took the field for a
    workflow's and dropped it. This build records lookbacks (and cancel_on names) apart, records
    every version again on a store that build left, and takes the old field for no workflow."""
    store = await open_store(request.getfixturevalue(node))
    workflows, layout, redis = store.workflows, store.workflows.layout, store.workflows.conn.r
    await workflows.create_workflow(waits_for("a", ("paid", 20)))
    await workflows.create_workflow(waits_for("b", ("other", 0), triggers=("paid",)))
    await redis.delete(layout.waited_events_recorded, layout.waited_events)  # as that build left it
    await redis.hset(layout.event_subscribers("paid"), "~waited", "20.0")
    await redis.set(f"{layout.prefix}{{wf}}:waited:recorded", 1)
    await store.close()
    store = await open_store(request.getfixturevalue(node))
    try:
        assert await store.workflows.event_interest("paid") == EventInterest([("b", 1)], 20.0)
        await store.workflows.conn.r.hdel(layout.event_subscribers("paid"), "~waited")  # what an old replica does
        assert await store.workflows.event_interest("paid") == EventInterest([("b", 1)], 20.0)
    finally:
        await store.close()


async def test_a_deleted_workflow_goes_for_good_past_the_retention_once_no_task_of_it_remains(any_store_url):
    """Deleted versions are kept while any task of their workflow remains (the tasks that ran them
    are read back with them) and for the retention after the delete; then a purge removes them,
    and their numbers stay taken."""
    store = await open_store(any_store_url, retention_seconds=0.3)
    workflows = store.workflows
    try:
        for workflow_id in ("gone", "held", "again"):
            for description in ("1", "2"):
                await workflows.create_workflow(workflow_pb2.Workflow(workflow_id=workflow_id, description=description))
        task, event = new_task("held")
        await store.queue.create_task(task, event)  # a task of it, still queued
        for workflow_id in ("gone", "held", "again"):
            assert await workflows.delete_workflow(workflow_id) == 2
        assert await workflows.purge_deleted(10) == []  # deleted within the retention
        await asyncio.sleep(0.5)
        await workflows.create_workflow(workflow_pb2.Workflow(workflow_id="again", description="3"))

        assert sorted(await workflows.purge_deleted(10)) == ["again", "gone"]

        for workflow_id in ("gone", "again"):
            assert await workflows.get_workflow(workflow_id, 1, deleted_too=True) is None
            assert await workflows.get_workflow(workflow_id, 2, deleted_too=True) is None
        assert (await workflows.get_workflow("held", 2, deleted_too=True)).description == "2"
        assert (await workflows.get_workflow("again")).version == 3  # a live version stays
        assert [w.workflow_id for w in (await workflows.list_workflows(10, ""))[0]] == ["again"]
        assert (await workflows.create_workflow(workflow_pb2.Workflow(workflow_id="gone"))).version == 3
        assert await workflows.purge_deleted(10) == []  # nothing twice

        cancelled = make_event(task.task_id, 2, task_pb2.TASK_EVENT_TYPE_CANCELLED)
        assert await store.queue.cancel_pending(task.task_id, cancelled) is not None
        await asyncio.sleep(0.5)
        assert await workflows.purge_deleted(10) == []  # its task, finished, is kept for the retention
        await store.tasks.purge_finished()
        assert await workflows.purge_deleted(10) == ["held"]
        assert await workflows.get_workflow("held", 1, deleted_too=True) is None
    finally:
        await store.close()


async def test_a_purge_takes_at_most_what_it_is_asked_and_leaves_a_workflow_deleted_again_since(any_store_url):
    store = await open_store(any_store_url, retention_seconds=0.3)
    workflows = store.workflows
    try:
        for workflow_id in ("a", "b", "c"):
            await workflows.create_workflow(workflow_pb2.Workflow(workflow_id=workflow_id))
            await workflows.delete_workflow(workflow_id)
        await asyncio.sleep(0.5)
        await workflows.create_workflow(workflow_pb2.Workflow(workflow_id="c"))
        await workflows.delete_workflow("c")  # deleted again: its retention counts from now

        first = await workflows.purge_deleted(1)
        assert len(first) == 1 and first[0] in ("a", "b")
        assert sorted(first + await workflows.purge_deleted(5)) == ["a", "b"]
        assert (await workflows.get_workflow("c", 1, deleted_too=True)) is not None
        await asyncio.sleep(0.5)
        assert await workflows.purge_deleted(5) == ["c"]
        assert await workflows.get_workflow("c", 2, deleted_too=True) is None
    finally:
        await store.close()
