"""ListTasks by label on every backend (SQLite, one Redis node, a Redis Cluster): read from an
index of each label, combined with the other filters, paged, and gone with the task."""

from __future__ import annotations

import pytest

from mcp_sdk.proto import task_pb2
from mcp_server.engine.ports import Deletion, TaskFilter
from mcp_server.state import open_store
from tests.contract.conftest import claim_and_complete, ids, new_task

pytestmark = pytest.mark.asyncio
ODD = "an odd value: = , ; \n ☃ " + "x" * 200


async def labelled(store, labels: dict[str, str], owner: str = "") -> task_pb2.Task:
    task, event = new_task(owner=owner)
    task.labels.update(labels)
    await store.queue.create_task(task, event)
    return task


def by(*labels: tuple[str, str], **rest) -> TaskFilter:
    return TaskFilter(labels=tuple(sorted(labels)), **rest)


async def test_tasks_are_listed_by_their_labels_with_every_other_filter(store):
    first = await labelled(store, {"order": "A", "env": "prod"})  # the oldest: claimed first below
    b = await labelled(store, {"order": "B", "env": "prod"})
    dev = await labelled(store, {"order": "A", "env": "dev"})
    await labelled(store, {})
    anns = await labelled(store, {"order": "A", "env": "prod"}, owner="ann")
    odd = await labelled(store, {"note": ODD})

    order_a = await store.tasks.list_tasks(10, "", by(("order", "A")))
    assert ids(order_a) == [anns.task_id, dev.task_id, first.task_id] and order_a.total == 3
    assert ids(await store.tasks.list_tasks(10, "", by(("order", "A"), ("env", "prod")))) == [
        anns.task_id,
        first.task_id,
    ]
    assert ids(await store.tasks.list_tasks(10, "", by(("env", "prod"), owner="ann"))) == [anns.task_id]
    assert ids(await store.tasks.list_tasks(10, "", by(("note", ODD)))) == [odd.task_id]
    assert ids(await store.tasks.list_tasks(10, "", by(("order", "C")))) == []
    assert ids(await store.tasks.list_tasks(10, "", by(("order", "a")))) == []  # values are matched exactly
    assert ids(await store.tasks.list_tasks(10, "", by(("env", "prod"), workflow_id="other"))) == []
    assert b.task_id in ids(await store.tasks.list_tasks(10, "", by(("env", "prod"))))

    await claim_and_complete(store, first, 30)
    done = (task_pb2.TASK_STATUS_COMPLETED,)
    assert ids(await store.tasks.list_tasks(10, "", by(("order", "A"), statuses=done))) == [first.task_id]
    pending = (task_pb2.TASK_STATUS_PENDING,)
    assert ids(await store.tasks.list_tasks(10, "", by(("order", "A"), statuses=pending))) == [
        anns.task_id,
        dev.task_id,
    ]

    pages, token = [], ""
    while True:  # one at a time, newest first, each once
        page = await store.tasks.list_tasks(1, token, by(("order", "A")))
        pages += ids(page)
        if not page.more:
            break
        token = page.after[-1]
    assert pages == [anns.task_id, dev.task_id, first.task_id]

    assert await store.tasks.delete_finished(first.task_id) is Deletion.DELETED
    assert ids(await store.tasks.list_tasks(10, "", by(("order", "A")))) == [anns.task_id, dev.task_id]


async def test_whether_any_task_carries_a_label_is_one_look_and_forgets_deleted_tasks(store):
    assert not await store.tasks.labelled([("order", "A")])
    task = await labelled(store, {"order": "A", "note": ODD})
    assert await store.tasks.labelled([("order", "A")])
    assert await store.tasks.labelled([("order", "Z"), ("note", ODD)])  # any one of them
    assert not await store.tasks.labelled([("order", "a"), ("order", "B")])
    await claim_and_complete(store, task, 30)
    assert await store.tasks.labelled([("order", "A")])  # ended tasks keep their labels
    assert await store.tasks.delete_finished(task.task_id) is Deletion.DELETED
    assert not await store.tasks.labelled([("order", "A"), ("note", ODD)])


async def test_many_tasks_of_other_labels_do_not_hide_the_few_of_one(store):
    """A rare label among many others is read from its own index: its page is full and whole."""
    rare = [await labelled(store, {"customer": "rare"}) for _ in range(3)]
    for i in range(60):
        await labelled(store, {"customer": f"common-{i % 3}"})
    page = await store.tasks.list_tasks(2, "", by(("customer", "rare")))
    rest = await store.tasks.list_tasks(2, page.after[-1], by(("customer", "rare")))
    assert ids(page) + ids(rest) == [t.task_id for t in reversed(rare)] and page.more and not rest.more


async def test_tasks_stored_before_the_label_index_are_found_by_label_after_an_upgrade(any_store_url, tmp_path):
    """A store written before labels were indexed: SQLite indexes them as it opens, Redis in a
    background pass that opening it starts, once; a task deleted before stays gone."""
    url = any_store_url if not any_store_url.startswith("sqlite") else f"sqlite:///{tmp_path}/old.db"
    store = await open_store(url)
    old = [await labelled(store, {"order": "old", "n": str(i)}) for i in range(3)]
    bare = await labelled(store, {})
    await claim_and_complete(store, old[0], 30)  # the oldest: claims go oldest first
    assert await store.tasks.delete_finished(old[0].task_id) is Deletion.DELETED
    await forget_the_label_index(store, url)
    if not url.startswith("sqlite"):
        assert ids(await store.tasks.list_tasks(10, "", by(("order", "old")))) == []  # as an earlier version left it
    await store.close()
    store = await open_store(url)  # this version opens it
    if not url.startswith("sqlite"):
        await store.tasks.labels.running  # the pass it started
    try:
        found = await store.tasks.list_tasks(10, "", by(("order", "old")))
        assert ids(found) == [old[2].task_id, old[1].task_id] and found.total == 2
        assert ids(await store.tasks.list_tasks(10, "", by(("n", "1")))) == [old[1].task_id]
        assert bare.task_id in ids(await store.tasks.list_tasks(10, "", TaskFilter()))
        newer = await labelled(store, {"order": "old"})
        assert ids(await store.tasks.list_tasks(10, "", by(("order", "old"))))[0] == newer.task_id
        for task in (old[1], old[2]):  # what the pass wrote goes with the task
            await claim_and_complete(store, task, 30)
            assert await store.tasks.delete_finished(task.task_id) is Deletion.DELETED
        assert ids(await store.tasks.list_tasks(10, "", by(("order", "old")))) == [newer.task_id]
    finally:
        await store.close()


async def forget_the_label_index(store, url: str) -> None:
    """Leave the store as a version without the label index would have: no index entries."""
    if url.startswith("sqlite"):
        await store.connection.run(lambda db: db.execute("DROP TABLE task_labels"))
        return
    conn = store.connection
    layout = conn.layout
    for partition in range(layout.partitions):
        for raw in await conn.do(conn.r.zrange(layout.index(partition), 0, -1)):
            header = layout.task(raw.decode()).header
            await conn.do(conn.r.hdel(header, "lb"))
    pattern = f"{layout.index_prefix(0).split('{')[0]}*i:l:*"
    for node_keys in [k async for k in conn.r.scan_iter(match=pattern, count=1000)]:
        await conn.do(conn.r.delete(node_keys))
    await conn.do(conn.r.hdel(layout.meta, "labels_indexed"))
