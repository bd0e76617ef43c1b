"""ListTasks by label on every backend (SQLite, one Redis node, a Redis Cluster): read from an
index of each label, combined with the other filters, paged, and gone with the task."""

from __future__ import annotations

import pytest

from mcp_sdk.proto import task_pb2
from mcp_server.engine.ports import Deletion, TaskFilter
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


async def test_many_tasks_of_other_labels_do_not_hide_the_few_of_one(store):
    """A rare label among many others is read from its own index: its page is full and whole."""
    rare = [await labelled(store, {"customer": "rare"}) for _ in range(3)]
    for i in range(60):
        await labelled(store, {"customer": f"common-{i % 3}"})
    page = await store.tasks.list_tasks(2, "", by(("customer", "rare")))
    rest = await store.tasks.list_tasks(2, page.after[-1], by(("customer", "rare")))
    assert ids(page) + ids(rest) == [t.task_id for t in reversed(rare)] and page.more and not rest.more
