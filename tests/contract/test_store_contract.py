"""The Store contract: every backend (embedded SQLite, Redis) must behave the same."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from mcp_sdk.proto import protocol_pb2, registry_pb2, task_pb2, workflow_pb2
from mcp_server.engine.context import make_event, now
from mcp_server.engine.ports import CapacityRequest, Checkpoint, StepRecord, TaskFilter
from mcp_server.errors import LeaseLost
from mcp_server.state import open_store
from mcp_server.state.common import RequestIdReused

pytestmark = pytest.mark.asyncio
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
    claimed, token = await store.claim_task("me", lease_seconds)
    await store.save_checkpoint(
        checkpoint(
            claimed, token, task_pb2.TASK_STATUS_COMPLETED, [make_event(task.task_id, 2, E.TASK_EVENT_TYPE_COMPLETED)]
        )
    )


def ids(page) -> list[str]:
    return [t.task_id for t in page.tasks]


async def test_workflow_versions_are_numbered_and_immutable(store):
    first = await store.create_workflow(workflow_pb2.Workflow(workflow_id="w", description="1"))
    second = await store.create_workflow(workflow_pb2.Workflow(workflow_id="w", description="2"))
    assert (first.version, second.version) == (1, 2)
    assert (await store.get_workflow("w")).description == "2"
    assert (await store.get_workflow("w", 1)).description == "1"
    assert await store.get_workflow("w", 3) is None
    assert await store.delete_workflow("w") == 2
    assert await store.get_workflow("w") is None


async def test_request_id_dedupes_task_creation(store):
    task, event = new_task(request_id="same")
    created, fresh = await store.create_task(task, event)
    again_task, again_event = new_task(request_id="same")
    existing, fresh_again = await store.create_task(again_task, again_event)
    assert fresh and not fresh_again and existing.task_id == created.task_id
    assert await store.queue_length() == 1
    other_task, other_event = new_task(request_id="same", owner="someone-else")
    theirs, fresh_theirs = await store.create_task(other_task, other_event)
    assert fresh_theirs and theirs.task_id != created.task_id
    changed, changed_event = new_task(request_id="same")
    with pytest.raises(RequestIdReused):
        await store.create_task(changed, changed_event, fingerprint="another request")


async def test_claims_come_in_priority_order_fifo_within_a_priority(store):
    made = []
    for priority in (1, 5, 1, 5, 3):
        task, event = new_task(priority=priority)
        await store.create_task(task, event)
        made.append((priority, task.task_id))
    claimed = []
    while (claim := await store.claim_task("me", 30)) is not None:
        claimed.append(claim[0].task_id)
    expected = [i for _, i in sorted(made, key=lambda p: -p[0])]  # sorted() is stable: FIFO within a priority
    assert claimed == expected


async def test_a_checkpoint_writes_header_steps_values_and_events_together_fenced_by_the_lease(store):
    task, event = new_task()
    await store.create_task(task, event)
    claimed, token = await store.claim_task("replica-a", 30)
    assert claimed.input_data["n"] == 1 and claimed.status == task_pb2.TASK_STATUS_PENDING
    step = task_pb2.StepState(
        path="root",
        node_id="root",
        kind="step",
        status=task_pb2.STEP_STATUS_RUNNING,
        input_ref=task_pb2.ValueRef(sha256="d1", size_bytes=5),
    )
    await store.save_checkpoint(
        checkpoint(
            claimed,
            token,
            task_pb2.TASK_STATUS_RUNNING,
            [
                make_event(task.task_id, 2, E.TASK_EVENT_TYPE_STARTED),
                make_event(task.task_id, 3, E.TASK_EVENT_TYPE_STEP_STARTED, step_path="root"),
            ],
            [StepRecord(0, "root", step.SerializeToString())],
            {"d1": b"value"},
        )
    )
    assert [e.sequence for e in await store.read_events(task.task_id, 0)] == [1, 2, 3]
    assert [e.sequence for e in await store.read_events(task.task_id, 2)] == [3]
    read = await store.get_task(task.task_id)
    assert (read.status, read.last_sequence, read.step_count, read.input_data["n"]) == (
        task_pb2.TASK_STATUS_RUNNING,
        3,
        1,
        1,
    )
    assert [(r.index, r.path) for r in await store.read_steps(task.task_id, 0, 10)] == [(0, "root")]
    assert task_pb2.StepState.FromString((await store.read_step(task.task_id, "root")).data).input_ref.sha256 == "d1"
    assert await store.read_values(task.task_id, ["d1", "nope"]) == {"d1": b"value"}
    with pytest.raises(LeaseLost):
        await store.save_checkpoint(
            checkpoint(
                claimed,
                token + 1,
                task_pb2.TASK_STATUS_RUNNING,
                [make_event(task.task_id, 4, E.TASK_EVENT_TYPE_PROGRESS)],
            )
        )
    assert [e.sequence for e in await store.read_events(task.task_id, 0)] == [1, 2, 3]


async def test_a_repeated_checkpoint_changes_nothing(store):
    # A reply lost to a dropped connection is answered by sending the same checkpoint again.
    task, event = new_task()
    await store.create_task(task, event)
    claimed, token = await store.claim_task("me", 30)
    same = checkpoint(
        claimed,
        token,
        task_pb2.TASK_STATUS_RUNNING,
        [make_event(task.task_id, 2, E.TASK_EVENT_TYPE_STARTED)],
        [StepRecord(0, "a", task_pb2.StepState(path="a").SerializeToString())],
        {"d": b"v"},
    )
    await store.save_checkpoint(same)
    await store.save_checkpoint(same)
    assert [e.sequence for e in await store.read_events(task.task_id, 0)] == [1, 2]
    assert [r.path for r in await store.read_steps(task.task_id, 0, 10)] == ["a"]


async def test_step_records_are_kept_by_index_and_rewritten_in_place(store):
    task, event = new_task()
    await store.create_task(task, event)
    claimed, token = await store.claim_task("me", 30)
    sequence = 1
    for index in range(250):
        sequence += 1
        state = task_pb2.StepState(path=f"root/s{index}", status=task_pb2.STEP_STATUS_RUNNING)
        started = make_event(task.task_id, sequence, E.TASK_EVENT_TYPE_STEP_STARTED)
        await store.save_checkpoint(
            checkpoint(
                claimed,
                token,
                task_pb2.TASK_STATUS_RUNNING,
                [started],
                [StepRecord(index, state.path, state.SerializeToString())],
            )
        )
    done = task_pb2.StepState(path="root/s7", status=task_pb2.STEP_STATUS_COMPLETED)
    await store.save_checkpoint(
        checkpoint(
            claimed, token, task_pb2.TASK_STATUS_RUNNING, [], [StepRecord(7, done.path, done.SerializeToString())]
        )
    )
    page = await store.read_steps(task.task_id, 5, 4)
    assert [(r.index, r.path) for r in page] == [(i, f"root/s{i}") for i in range(5, 9)]
    assert task_pb2.StepState.FromString(page[2].data).status == task_pb2.STEP_STATUS_COMPLETED
    assert len(await store.read_steps(task.task_id, 0, 10_000)) == 250
    assert await store.read_steps(task.task_id, 250, 10) == []
    assert await store.read_step(task.task_id, "root/nope") is None


async def test_an_expired_lease_is_taken_over_and_the_old_holder_is_fenced_out(store):
    task, event = new_task()
    await store.create_task(task, event)
    _, old_token = await store.claim_task("replica-a", 0.2)
    assert await store.renew_leases({task.task_id: old_token}, 0.2) == []
    assert await store.claim_task("replica-b", 30) is None
    await asyncio.sleep(0.3)
    assert await store.release_expired_leases() == 1
    taken, new_token = await store.claim_task("replica-b", 30)
    assert taken.task_id == task.task_id and new_token > old_token
    assert await store.renew_leases({task.task_id: old_token}, 30) == [task.task_id]
    assert await store.renew_leases({taken.task_id: new_token}, 30) == []
    with pytest.raises(LeaseLost):
        await store.save_checkpoint(checkpoint(taken, old_token, task_pb2.TASK_STATUS_RUNNING, []))
    await store.save_checkpoint(checkpoint(taken, new_token, task_pb2.TASK_STATUS_RUNNING, []))


async def test_finished_tasks_hold_no_lease(store):
    task, event = new_task()
    await store.create_task(task, event)
    await claim_and_complete(store, task, 0.1)
    await asyncio.sleep(0.2)
    assert await store.release_expired_leases() == 0
    assert await store.claim_task("me", 1) is None


async def test_cancel_pending_only_cancels_a_queued_task(store):
    task, event = new_task()
    await store.create_task(task, event)
    cancel = task_pb2.TaskEvent(task_id=task.task_id, type=E.TASK_EVENT_TYPE_CANCELLED, message="stop")
    cancelled = await store.cancel_pending(task.task_id, cancel)
    assert cancelled.status == task_pb2.TASK_STATUS_CANCELLED and cancelled.last_sequence == 2
    assert [e.type for e in await store.read_events(task.task_id, 0)] == [
        E.TASK_EVENT_TYPE_QUEUED,
        E.TASK_EVENT_TYPE_CANCELLED,
    ]
    assert await store.claim_task("me", 1) is None
    assert await store.cancel_pending(task.task_id, cancel) is None
    running, running_event = new_task()
    await store.create_task(running, running_event)
    await store.claim_task("me", 30)
    assert await store.cancel_pending(running.task_id, cancel) is None


async def test_wait_events_wakes_when_the_log_grows(store):
    task, event = new_task()
    await store.create_task(task, event)
    claimed, token = await store.claim_task("me", 30)
    waiter = asyncio.create_task(store.wait_events(task.task_id, 1, timeout=3.0))
    await asyncio.sleep(0.1)
    await store.save_checkpoint(
        checkpoint(
            claimed, token, task_pb2.TASK_STATUS_RUNNING, [make_event(task.task_id, 2, E.TASK_EVENT_TYPE_STARTED)]
        )
    )
    got = await asyncio.wait_for(waiter, 3.0)
    assert [e.sequence for e in got] == [2]
    assert await store.wait_events(task.task_id, 2, timeout=0.1) == []


async def test_list_tasks_filters_and_pages(store):
    made = []
    for i in range(5):
        task, event = new_task(workflow_id="a" if i % 2 == 0 else "b")
        await store.create_task(task, event)
        made.append(task)
    page = await store.list_tasks(2, "", TaskFilter(workflow_id="a"))
    assert page.more and page.total == 3
    rest = await store.list_tasks(2, page.after[-1], TaskFilter(workflow_id="a"))
    assert ids(page) + ids(rest) == [made[4].task_id, made[2].task_id, made[0].task_id]
    assert not rest.more
    assert (await store.list_tasks(10, "", TaskFilter(statuses=(task_pb2.TASK_STATUS_COMPLETED,)))).tasks == []


async def test_list_tasks_reads_the_index_of_the_status_owner_and_workflow_asked_for(store):
    mine = []
    for i in range(6):
        task, event = new_task(workflow_id="w1" if i % 2 else "w2", owner="ann" if i < 4 else "ben")
        await store.create_task(task, event)
        mine.append(task)
    await claim_and_complete(store, mine[0], 30)  # the oldest: claims go oldest first
    completed = (task_pb2.TASK_STATUS_COMPLETED,)
    assert ids(await store.list_tasks(10, "", TaskFilter(owner="ann"))) == [t.task_id for t in reversed(mine[:4])]
    assert ids(await store.list_tasks(10, "", TaskFilter(statuses=completed, owner="ann"))) == [mine[0].task_id]
    assert ids(await store.list_tasks(10, "", TaskFilter(statuses=completed, owner="ben"))) == []
    both = await store.list_tasks(10, "", TaskFilter(owner="ann", workflow_id="w1"))
    assert ids(both) == [mine[3].task_id, mine[1].task_id]
    pending = await store.list_tasks(10, "", TaskFilter(statuses=(task_pb2.TASK_STATUS_PENDING,), workflow_id="w2"))
    assert ids(pending) == [mine[4].task_id, mine[2].task_id] and pending.total == 2
    any_status = await store.list_tasks(
        10, "", TaskFilter(statuses=(task_pb2.TASK_STATUS_PENDING, task_pb2.TASK_STATUS_COMPLETED))
    )
    assert ids(any_status) == [t.task_id for t in reversed(mine)] and any_status.total == 6


async def test_registry_entries_round_trip(store):
    entry = registry_pb2.RegisteredProtocol(address="127.0.0.1:9", manifest=protocol_pb2.ProtocolManifest(name="p"))
    await store.put_protocol(entry)
    assert [e.manifest.name for e in await store.list_protocol_entries()] == ["p"]
    assert await store.delete_protocols(address="127.0.0.1:9") == 1
    assert await store.list_protocol_entries() == []


async def test_a_registry_entry_is_removed_only_as_it_was_read(store):
    def entry(name: str, seconds: int) -> registry_pb2.RegisteredProtocol:
        made = registry_pb2.RegisteredProtocol(address="127.0.0.1:9", manifest=protocol_pb2.ProtocolManifest(name=name))
        made.manifest.input_schema.update({"type": "object", "properties": {"b": {}, "a": {}}})  # a map: order varies
        made.expire_time.FromSeconds(seconds)
        return made

    await store.put_protocol(entry("p", 100))
    await store.put_protocol(entry("q", 100))
    read = await store.list_protocol_entries()
    await store.put_protocol(entry("q", 200))  # renewed after it was read
    assert await store.remove_protocol_entries(read) == [0]
    assert [(e.manifest.name, e.expire_time.seconds) for e in await store.list_protocol_entries()] == [("q", 200)]


async def test_finished_tasks_expire_after_the_retention_time(any_store_url):
    store = await open_store(any_store_url, retention_seconds=0.3)
    try:
        task, event = new_task()
        await store.create_task(task, event)
        await claim_and_complete(store, task, 30)
        keeper, keeper_event = new_task()
        await store.create_task(keeper, keeper_event)
        assert await store.get_task(task.task_id) is not None
        await asyncio.sleep(0.5)
        await store.purge_finished()
        assert await store.get_task(task.task_id) is None
        assert await store.read_events(task.task_id, 0) == []
        assert await store.read_steps(task.task_id, 0, 10) == [] and await store.read_values(task.task_id, ["d"]) == {}
        assert ids(await store.list_tasks(10, "", TaskFilter())) == [keeper.task_id]  # the pending task stays
        assert ids(await store.list_tasks(10, "", TaskFilter(statuses=(task_pb2.TASK_STATUS_COMPLETED,)))) == []
    finally:
        await store.close()


async def test_list_paging_is_stable_while_tasks_come_and_go(store):
    older = []
    for _ in range(6):
        task, event = new_task()
        await store.create_task(task, event)
        older.append(task.task_id)
    first = await store.list_tasks(3, "", TaskFilter())
    for _ in range(3):  # newer tasks arrive between pages
        task, event = new_task()
        await store.create_task(task, event)
    second = await store.list_tasks(3, first.after[-1], TaskFilter())
    assert ids(first) + ids(second) == list(reversed(older))
    assert not second.more


# ---- the capacity ledger -------------------------------------------------------------------
def ask(
    waiter: str, needs: str, candidates: dict[str, str], priority: int = 0, at: int = 0, lease: float = 30.0
) -> CapacityRequest:
    return CapacityRequest(waiter, f"{at:015d}:{waiter}", priority, needs, candidates, lease, 3.0)


async def test_capacity_is_granted_while_it_lasts_and_given_back(store):
    gpu = {"a:1": "0,0,1", "b:1": "0,0,1"}
    first = await store.acquire_capacity(ask("w1", "0,0,1", gpu, at=1))
    second = await store.acquire_capacity(ask("w2", "0,0,1", gpu, at=2))
    assert {first, second} == {"a:1", "b:1"}  # the least loaded first: one each
    assert await store.acquire_capacity(ask("w3", "0,0,1", gpu, at=3)) is None
    assert (await store.capacity_in_use())[first] == "0,0,1"
    await store.release_capacity("w1", f"{1:015d}:w1")
    assert await store.acquire_capacity(ask("w3", "0,0,1", gpu, at=3)) == first
    assert await store.acquire_capacity(ask("w1", "0,0,1", gpu, at=1)) is None  # a given-back grant is gone


async def test_waiters_are_granted_by_priority_then_first_come(store):
    one = {"a:1": "0,0,1"}
    assert await store.acquire_capacity(ask("holder", "0,0,1", one, at=1)) == "a:1"
    for waiter, priority, at in (("low-early", 0, 2), ("high-late", 5, 3), ("low-late", 0, 4)):
        assert await store.acquire_capacity(ask(waiter, "0,0,1", one, priority, at)) is None
    order = []
    holder, holder_at = "holder", 1
    for _ in range(3):
        await store.release_capacity(holder, f"{holder_at:015d}:{holder}")
        for waiter, priority, at in (("low-early", 0, 2), ("high-late", 5, 3), ("low-late", 0, 4)):
            if waiter not in order and await store.acquire_capacity(ask(waiter, "0,0,1", one, priority, at)) == "a:1":
                order.append(waiter)
                holder, holder_at = waiter, at
                break
    assert order == ["high-late", "low-early", "low-late"]


async def test_a_call_that_needs_more_holds_back_the_smaller_ones_behind_it(store):
    two = {"a:1": "0,0,2"}
    assert await store.acquire_capacity(ask("one", "0,0,1", two, at=1)) == "a:1"
    assert await store.acquire_capacity(ask("pair", "0,0,2", two, at=2)) is None  # waits for both GPUs
    assert await store.acquire_capacity(ask("small", "0,0,1", two, at=3)) is None  # would fit, but the pair came first
    assert await store.capacity_waiting() == 2
    assert await store.release_capacity("one", f"{1:015d}:one") == 2  # how many wait, told to the one giving back
    assert await store.acquire_capacity(ask("small", "0,0,1", two, at=3)) is None
    assert (
        await store.acquire_capacity(ask("pair", "0,0,2", two, at=2)) == "a:1"
    )  # granted when it asked, or on its behalf
    assert await store.release_capacity("small", f"{3:015d}:small") == 0  # a withdrawn waiter waits no more
    assert await store.capacity_waiting() == 0


async def test_a_lease_that_runs_out_gives_the_capacity_back(store):
    one = {"a:1": "0,0,1"}
    assert await store.acquire_capacity(ask("dies", "0,0,1", one, at=1, lease=0.2)) == "a:1"
    assert await store.acquire_capacity(ask("next", "0,0,1", one, at=2)) is None
    await store.renew_capacity(["dies"], 0.2)
    await asyncio.sleep(0.35)
    assert await store.acquire_capacity(ask("next", "0,0,1", one, at=2)) == "a:1"
    assert (await store.capacity_in_use())["a:1"] == "0,0,1"
