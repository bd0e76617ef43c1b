"""ScheduleStore on every store: what a firing records (runs, skips and refusals) is counted and
kept, newest first, at most RECENT_RUNS of each; an SQLite file from before refusals were kept
gets their columns when it opens."""

from __future__ import annotations

import sqlite3
import uuid

import pytest

from mcp_server.engine.ports import NEVER, ScheduleProgress
from mcp_server.engine.ports.schedules import RECENT_RUNS
from mcp_server.state import open_store

pytestmark = pytest.mark.asyncio


async def test_refused_fire_times_are_counted_kept_with_why_and_listed_among_the_recent(store):
    schedule_id = f"s-{uuid.uuid4().hex[:8]}"
    assert await store.schedules.create_schedule(schedule_id, "ann", b"definition", 1_000, NEVER)
    await store.schedules.record_progress(
        schedule_id,
        ScheduleProgress(started=[(10_000, "task-a")], skipped=[11_000], refused=[(12_000, "NOT_FOUND: x")]),
    )
    refused = [(13_000 + i, f"INPUT_REJECTED: {i} 'why' is a required property") for i in range(RECENT_RUNS + 2)]
    await store.schedules.record_progress(schedule_id, ScheduleProgress(refused=refused))
    record = await store.schedules.get_schedule(schedule_id)
    assert record is not None
    assert (record.runs, record.skipped, record.refused) == (1, 1, RECENT_RUNS + 3)
    newest = sorted(refused, reverse=True)[:RECENT_RUNS]
    assert list(record.refusals) == newest
    assert list(record.recent) == [(fire, "") for fire, _ in newest]  # the ten newest fire times, all refused


async def test_an_sqlite_file_from_before_refusals_gets_their_columns(tmp_path):
    path = tmp_path / "old.db"
    store = await open_store(f"sqlite:///{path}")
    assert await store.schedules.create_schedule("kept", "ann", b"definition", 1_000, NEVER)
    await store.close()
    with sqlite3.connect(path) as db:  # as a server before this one left it
        db.execute("ALTER TABLE schedules DROP COLUMN refusals")
        db.execute("ALTER TABLE schedules DROP COLUMN refused")
        db.execute("ALTER TABLE schedules DROP COLUMN latest_run")
    store = await open_store(f"sqlite:///{path}")
    try:
        await store.schedules.record_progress("kept", ScheduleProgress(refused=[(5_000, "NOT_FOUND: gone")]))
        record = await store.schedules.get_schedule("kept")
        assert record is not None and record.refused == 1 and list(record.refusals) == [(5_000, "NOT_FOUND: gone")]
        await store.schedules.record_progress("kept", ScheduleProgress(started=[(6_000, "task-a")]))
        assert (await store.schedules.get_schedule("kept")).latest_run == (6_000, "task-a")  # type: ignore[union-attr]
    finally:
        await store.close()


async def test_the_last_task_started_is_kept_however_many_skips_follow_it(store):
    """The overlap policies ask whether the last task a schedule started has ended: a task that
    outlasts more skipped fire times than the recent list holds must still be that task (before,
    it fell out of the list, and the next fire started a second task beside it)."""
    schedule_id = f"s-{uuid.uuid4().hex[:8]}"
    assert await store.schedules.create_schedule(schedule_id, "ann", b"definition", 1_000, NEVER)
    await store.schedules.record_progress(schedule_id, ScheduleProgress(started=[(10_000, "task-a")]))
    for fire in range(11_000, 11_000 + 1_000 * (RECENT_RUNS + 2), 1_000):
        await store.schedules.record_progress(schedule_id, ScheduleProgress(skipped=[fire]))
    record = await store.schedules.get_schedule(schedule_id)
    assert record is not None and all(not task for _, task in record.recent)  # pushed out by the skips
    assert record.latest_run == (10_000, "task-a")
    await store.schedules.record_progress(schedule_id, ScheduleProgress(started=[(5_000, "backfilled")]))
    await store.schedules.record_progress(schedule_id, ScheduleProgress(started=[(40_000, "task-b")]))
    record = await store.schedules.get_schedule(schedule_id)
    assert record is not None and record.latest_run == (40_000, "task-b")  # the newest fire time's, not write's
