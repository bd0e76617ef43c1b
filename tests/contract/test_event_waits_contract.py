"""WaitStore's index of waits for events, on every store: a wait record with a key is listed by
(signal, key) from the checkpoint that writes it until the one that removes it or gives it a
signal (a checkpoint, or a signal written to the parked task), and a listed entry can be
forgotten. KeptEventStore: events read back by name, slot and time, trimmed by count and age, a
name's key slots capped, and each name kept for its own time."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from dataclasses import replace

import pytest

from mcp_sdk.proto import task_pb2
from mcp_server.engine.events import make_event
from mcp_server.engine.ports import SignalDelivery, WaitRecord
from mcp_server.engine.ports.kept_events import KEPT_PER_SLOT, KeptEvent
from mcp_server.state import open_store
from mcp_server.state.common import live_part
from tests.contract.conftest import checkpoint, new_task

pytestmark = pytest.mark.asyncio
E = task_pb2.TaskEventType
WAITING = task_pb2.TASK_STATUS_WAITING
SIGNAL = "event:payment.received"
MAX_KEYS = 1000  # keys kept per event name: more than any test here keeps


async def waiting_task(store, waits: dict[str, WaitRecord | None]):
    task, event = new_task()
    await store.queue.create_task(task, event)
    claimed, token = await store.queue.claim_task("me", 30)
    written = checkpoint(claimed, token, WAITING, [make_event(task.task_id, 2, E.TASK_EVENT_TYPE_STEP_SUSPENDED)])
    await store.tasks.save_checkpoint(replace(written, waits=waits))
    return claimed, token


async def test_a_wait_with_a_key_is_listed_by_signal_and_key_until_it_stops(store):
    keyed = WaitRecord(SIGNAL, 0, 1, key="o-1")
    task, token = await waiting_task(
        store, {"a": keyed, "b": WaitRecord(SIGNAL, 0, 2, key=""), "c": WaitRecord("go", 0, 3)}
    )
    found = await store.waits.event_waiters(SIGNAL, ("o-1", ""))
    assert sorted(found) == [("", task.task_id, "b"), ("o-1", task.task_id, "a")]
    assert await store.waits.event_waiters(SIGNAL, ("o-2",)) == []
    assert await store.waits.event_waiters("go", ("",)) == []  # a wait for a signal is not indexed
    assert (await store.waits.read_waits(task.task_id))["a"] == keyed  # the record reads back with its key

    stopped = checkpoint(task, token, WAITING, [make_event(task.task_id, 3, E.TASK_EVENT_TYPE_STEP_COMPLETED)])
    await store.tasks.save_checkpoint(replace(stopped, waits={"a": None, "b": replace(keyed, key="", assigned=3)}))
    assert await store.waits.event_waiters(SIGNAL, ("o-1", "")) == []  # stopped, and one with a signal on its way


async def test_a_signal_written_to_a_parked_task_takes_its_wait_off_the_index(store):
    task, _ = await waiting_task(store, {"a": WaitRecord(SIGNAL, 0, 1, key="o-1")})
    header = await store.tasks.get_task(task.task_id)
    live = task_pb2.Task()
    live.CopyFrom(header)
    live.last_sequence = header.last_sequence + 1
    event = make_event(task.task_id, live.last_sequence, E.TASK_EVENT_TYPE_SIGNAL_RECEIVED, step_path="a")
    request = task_pb2.SignalTaskRequest(task_id=task.task_id, signal=SIGNAL, request_id="r-1", step_path="a")
    wait = WaitRecord(SIGNAL, 0, 1, assigned=live.last_sequence, key="o-1")
    delivery = SignalDelivery(header.last_sequence, event, live_part(live), "a", wait)
    # parked: the checkpoint wrote it WAITING with no lease; the signal is written with its event
    outcome = await store.waits.send_signal(task.task_id, request, delivery)
    assert outcome.status == "delivered", outcome
    assert await store.waits.event_waiters(SIGNAL, ("o-1",)) == []


async def test_a_listed_wait_can_be_forgotten(store):
    task, _ = await waiting_task(store, {"a": WaitRecord(SIGNAL, 0, 1, key="k|with|bars")})
    assert await store.waits.event_waiters(SIGNAL, ("k|with|bars",)) == [("k|with|bars", task.task_id, "a")]
    await store.waits.forget_event_waiter(SIGNAL, "k|with|bars", task.task_id, "a")
    assert await store.waits.event_waiters(SIGNAL, ("k|with|bars",)) == []


async def test_kept_events_are_read_back_by_name_slot_and_time_oldest_first_and_trimmed(store):
    name = f"kept.{uuid.uuid4().hex[:8]}"
    now_ms = int(time.time() * 1000)
    first = KeptEvent("e-1", "ada", False, now_ms - 5000, b"\x01\x02")
    second = KeptEvent("e-2", "line\nbreak|bar", True, now_ms - 1000, b"")
    await store.kept_events.keep(name, ("k:o-1", "any"), first, 60, MAX_KEYS)
    await store.kept_events.keep(name, ("k:o-2", "any"), second, 60, MAX_KEYS)
    assert await store.kept_events.kept(name, "k:o-1", 0) == [first]
    assert await store.kept_events.kept(name, "any", 0) == [first, second]
    assert await store.kept_events.kept(name, "any", now_ms - 2000) == [second]
    assert await store.kept_events.kept(name, "k:o-3", 0) == []
    for i in range(KEPT_PER_SLOT + 5):
        await store.kept_events.keep(
            name, ("k:many",), KeptEvent(f"m-{i}", "ada", False, now_ms + i, b""), 60, MAX_KEYS
        )
    kept = await store.kept_events.kept(name, "k:many", 0)
    assert len(kept) == KEPT_PER_SLOT and kept[0].event_id == "m-5"  # the newest are kept
    stale = KeptEvent("old", "ada", False, now_ms - 120_000, b"")
    await store.kept_events.keep(name, ("k:old",), stale, 60, MAX_KEYS)  # older than it is kept for: gone at once
    assert await store.kept_events.kept(name, "k:old", 0) == []


async def test_a_name_keeps_at_most_its_cap_of_keys_dropping_those_kept_into_least_recently(store):
    name = f"capped.{uuid.uuid4().hex[:8]}"
    now_ms = int(time.time() * 1000)
    for i, key in enumerate(["a", "b", "c", "a", "d"]):  # `a` kept into again after `b` and `c`
        event = KeptEvent(f"e-{i}", "ada", False, now_ms + i, b"")
        await store.kept_events.keep(name, (f"k:{key}", "any"), event, 60, 3)
    kept = {key: [e.event_id for e in await store.kept_events.kept(name, f"k:{key}", 0)] for key in "abcd"}
    assert kept == {"a": ["e-0", "e-3"], "b": [], "c": ["e-2"], "d": ["e-4"]}
    assert len(await store.kept_events.kept(name, "any", 0)) == 5  # the slot of every key is not one of them


async def test_a_name_s_keep_time_neither_trims_another_s_events_nor_outlives_its_own(store):
    long, short = f"long.{uuid.uuid4().hex[:8]}", f"short.{uuid.uuid4().hex[:8]}"
    now_ms = int(time.time() * 1000)
    await store.kept_events.keep(long, ("k:x",), KeptEvent("old-but-kept", "ada", False, now_ms - 30_000, b""), 60, 9)
    await store.kept_events.keep(short, ("k:x",), KeptEvent("brief", "ada", False, now_ms, b""), 0.3, 9)
    assert [e.event_id for e in await store.kept_events.kept(long, "k:x", 0)] == ["old-but-kept"]
    await asyncio.sleep(0.6)
    await store.kept_events.keep(long, ("k:y",), KeptEvent("later", "ada", False, now_ms + 600, b""), 60, 9)
    assert await store.kept_events.kept(short, "k:x", 0) == []  # gone with its time
    assert [e.event_id for e in await store.kept_events.kept(long, "k:x", 0)] == ["old-but-kept"]


async def test_an_sqlite_file_from_before_kept_slots_keeps_its_kept_events(tmp_path):
    path = tmp_path / "old.db"
    store = await open_store(f"sqlite:///{path}")
    event = KeptEvent("e-1", "ada", False, int(time.time() * 1000), b"")
    await store.kept_events.keep("paid", ("k:o-1",), event, 60, MAX_KEYS)
    await store.close()
    with sqlite3.connect(path) as db:  # as the last build left it
        db.execute("DROP TABLE kept_slots")
    store = await open_store(f"sqlite:///{path}")
    try:
        await store.kept_events.keep("other", ("k:x",), KeptEvent("e-2", "ada", False, event.time_ms, b""), 1, MAX_KEYS)
        assert await store.kept_events.kept("paid", "k:o-1", 0) == [event]
    finally:
        await store.close()
