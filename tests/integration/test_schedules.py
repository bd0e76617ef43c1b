"""Schedules on both stores, with real servers on loopback and the testkit plugin process: one
task per fire time on two replicas, run-at, overlap, pause, trigger, backfill, refusals."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2, timestamp_pb2

from mcp_sdk.proto import schedule_pb2, task_pb2
from tests.conftest import client_for
from tests.helpers import create, error_reason, step, violations, workflow

pytestmark = pytest.mark.asyncio
P = schedule_pb2.OverlapPolicy
S = task_pb2.TaskStatus


def seconds(value: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(value * 1e9))
    return d


def at(epoch: float) -> timestamp_pb2.Timestamp:
    t = timestamp_pb2.Timestamp()
    t.FromNanoseconds(int(epoch * 1e9))
    return t


def a_schedule(workflow_id: str, **spec: Any) -> schedule_pb2.Schedule:
    schedule_id = spec.pop("schedule_id", f"s-{uuid.uuid4().hex[:10]}")
    overlap = spec.pop("overlap", P.OVERLAP_POLICY_ALLOW_ALL)
    paused = spec.pop("paused", False)
    schedule = schedule_pb2.Schedule(
        schedule_id=schedule_id,
        spec=schedule_pb2.ScheduleSpec(**spec),
        action=task_pb2.SubmitTaskRequest(workflow_id=workflow_id),
        overlap=overlap,
        paused=paused,
    )
    schedule.action.input_data.update({"ms": 10})
    return schedule


async def tasks_of(client: Any, workflow_id: str) -> list[task_pb2.Task]:
    reply = await client.tasks.ListTasks(task_pb2.ListTasksRequest(workflow_id=workflow_id, page_size=1000))
    return list(reply.tasks)


async def sleepy(client: Any, name: str | None = None) -> str:
    workflow_id = name or f"naps-{uuid.uuid4().hex[:8]}"
    await create(client, workflow(workflow_id, step("nap", "sleep", "{'ms': input.ms}")))
    return workflow_id


async def test_every_second_on_two_replicas_starts_one_task_per_fire_time_and_none_after_delete(
    server_factory, redis_url
):
    replicas = [await server_factory(store=redis_url) for _ in range(2)]
    clients = [client_for(r) for r in replicas]
    workflow_id = await sleepy(clients[0])
    schedule = await clients[0].schedules.CreateSchedule(
        schedule_pb2.CreateScheduleRequest(schedule=a_schedule(workflow_id, every=[seconds(1)]))
    )
    assert schedule.owner == "" and len(schedule.info.next_fire_times) == 5
    await asyncio.sleep(4.2)
    await clients[1].schedules.DeleteSchedule(schedule_pb2.DeleteScheduleRequest(schedule_id=schedule.schedule_id))
    deleted_at = time.time()
    await asyncio.sleep(1.5)
    found = await tasks_of(clients[0], workflow_id)
    fire_times = [t.labels["mcp/fire-time"] for t in found]
    assert len(found) >= 3 and len(set(fire_times)) == len(fire_times), fire_times
    assert all(t.labels["mcp/schedule"] == schedule.schedule_id for t in found)
    by_label = task_pb2.ListTasksRequest(labels={"mcp/schedule": schedule.schedule_id}, page_size=100)
    assert {t.task_id for t in (await clients[1].tasks.ListTasks(by_label)).tasks} == {t.task_id for t in found}
    latest = max(datetime.strptime(f, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp() for f in fire_times)
    assert latest <= deleted_at
    # whole seconds: every fire time of the interval, none missing between the first and the last
    stamps = sorted(int(datetime.strptime(f, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()) for f in fire_times)
    assert stamps == list(range(stamps[0], stamps[-1] + 1))
    for client in clients:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.schedules.GetSchedule(schedule_pb2.GetScheduleRequest(schedule_id=schedule.schedule_id))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        await client.channel.close()


async def test_run_at_fires_once_within_a_second(served):
    _, client = served
    workflow_id = await sleepy(client)
    when = time.time() + 1.0
    schedule = await client.schedules.CreateSchedule(
        schedule_pb2.CreateScheduleRequest(schedule=a_schedule(workflow_id, run_at=at(when)))
    )
    async with asyncio.timeout(10):
        while not (found := await tasks_of(client, workflow_id)):
            await asyncio.sleep(0.05)
    assert found[0].create_time.ToNanoseconds() / 1e9 - when < 1.0
    await asyncio.sleep(1.2)
    assert len(await tasks_of(client, workflow_id)) == 1
    got = await client.schedules.GetSchedule(schedule_pb2.GetScheduleRequest(schedule_id=schedule.schedule_id))
    assert got.info.runs == 1 and not got.info.next_fire_times
    assert got.info.recent_runs[0].task_id == found[0].task_id


async def skipping_every_second(client: Any, task_ms: int) -> tuple[str, schedule_pb2.Schedule]:
    """A SKIP schedule every second of a task that sleeps `task_ms`: its workflow and the schedule."""
    workflow_id = await sleepy(client)
    schedule = a_schedule(workflow_id, every=[seconds(1)], overlap=P.OVERLAP_POLICY_SKIP)
    schedule.action.input_data.update({"ms": task_ms})
    return workflow_id, await client.schedules.CreateSchedule(schedule_pb2.CreateScheduleRequest(schedule=schedule))


async def test_skip_never_runs_two_at_once(served):
    _, client = served
    workflow_id, created = await skipping_every_second(client, 2300)
    await asyncio.sleep(6.5)
    await client.schedules.DeleteSchedule(schedule_pb2.DeleteScheduleRequest(schedule_id=created.schedule_id))
    found = sorted(await tasks_of(client, workflow_id), key=lambda t: t.create_time.ToNanoseconds())
    assert len(found) >= 2
    for earlier, later in itertools.pairwise(found):
        done = (await client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=earlier.task_id))).task
        assert done.status == S.TASK_STATUS_COMPLETED
        assert later.create_time.ToNanoseconds() >= done.end_time.ToNanoseconds()


async def test_skip_holds_for_a_task_that_outlasts_more_fire_times_than_the_recent_runs_show(served):
    """A task of 12.5 s on a schedule every second: its skipped fire times push it out of the ten
    recent runs, and SKIP still sees it unfinished (before, the eleventh skip started a second
    task beside it)."""
    _, client = served
    workflow_id, created = await skipping_every_second(client, 12500)
    await asyncio.sleep(12)
    got = await client.schedules.GetSchedule(schedule_pb2.GetScheduleRequest(schedule_id=created.schedule_id))
    await client.schedules.DeleteSchedule(schedule_pb2.DeleteScheduleRequest(schedule_id=created.schedule_id))
    assert got.info.skipped >= 10 and all(not run.task_id for run in got.info.recent_runs)
    assert len(await tasks_of(client, workflow_id)) == 1


async def test_skipped_fire_times_are_counted_and_shown(served):
    _, client = served
    _, created = await skipping_every_second(client, 4500)
    await asyncio.sleep(3.6)
    got = await client.schedules.GetSchedule(schedule_pb2.GetScheduleRequest(schedule_id=created.schedule_id))
    assert got.info.runs >= 1 and got.info.skipped >= 1
    assert any(not run.task_id for run in got.info.recent_runs)
    assert any(run.task_id and run.status == S.TASK_STATUS_RUNNING for run in got.info.recent_runs)


async def test_fire_times_whose_task_is_refused_are_counted_and_say_why(served):
    """A newer version of the workflow declares an input schema the schedule's input does not
    fit: each fire time then starts no task, and says so (it was only logged)."""
    _, client = served
    workflow_id = await sleepy(client)
    created = await client.schedules.CreateSchedule(
        schedule_pb2.CreateScheduleRequest(schedule=a_schedule(workflow_id, every=[seconds(1)]))
    )
    strict = {"type": "object", "required": ["ms", "why"]}
    await create(client, workflow(workflow_id, step("nap", "sleep", "{'ms': input.ms}"), input_schema=strict))
    async with asyncio.timeout(10):
        while True:
            got = await client.schedules.GetSchedule(schedule_pb2.GetScheduleRequest(schedule_id=created.schedule_id))
            if got.info.refused >= 2:
                break
            await asyncio.sleep(0.1)
    refused = [run for run in got.info.recent_runs if run.refusal]
    assert len(refused) >= 2 and all(not run.task_id for run in refused)
    assert refused[0].refusal.startswith("INPUT_REJECTED: ") and "'why' is a required property" in refused[0].refusal
    started = len(await tasks_of(client, workflow_id))
    assert got.info.runs == started  # a refused fire time started nothing
    await client.schedules.DeleteSchedule(schedule_pb2.DeleteScheduleRequest(schedule_id=created.schedule_id))


async def test_pause_with_a_note_then_unpause(served):
    _, client = served
    workflow_id = await sleepy(client)
    schedule = a_schedule(workflow_id, every=[seconds(1)], paused=True)
    schedule.note = "waiting for the new prompt"
    created = await client.schedules.CreateSchedule(schedule_pb2.CreateScheduleRequest(schedule=schedule))
    assert created.paused and created.note == "waiting for the new prompt" and not created.info.next_fire_times
    await asyncio.sleep(2.2)
    assert await tasks_of(client, workflow_id) == []
    unpaused = await client.schedules.UpdateSchedule(
        schedule_pb2.UpdateScheduleRequest(
            schedule=schedule_pb2.Schedule(schedule_id=created.schedule_id, paused=False, note=""),
            update_mask=field_mask_pb2.FieldMask(paths=["paused", "note"]),
        )
    )
    assert not unpaused.paused and len(unpaused.info.next_fire_times) == 5
    assert unpaused.spec == created.spec  # what the mask does not name is kept
    async with asyncio.timeout(5):
        while not await tasks_of(client, workflow_id):
            await asyncio.sleep(0.1)
    found = await tasks_of(client, workflow_id)
    fired = datetime.strptime(found[-1].labels["mcp/fire-time"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    # nothing that came due while it was paused
    assert fired.timestamp() >= unpaused.info.next_fire_times[0].ToSeconds() - 1


async def test_trigger_starts_a_task_now_even_when_paused(served):
    _, client = served
    workflow_id = await sleepy(client)
    created = await client.schedules.CreateSchedule(
        schedule_pb2.CreateScheduleRequest(schedule=a_schedule(workflow_id, cron=["0 0 1 1 *"], paused=True))
    )
    reply = await client.tasks.GetTask(
        task_pb2.GetTaskRequest(
            task_id=(
                await client.schedules.TriggerSchedule(
                    schedule_pb2.TriggerScheduleRequest(schedule_id=created.schedule_id)
                )
            ).task.task_id
        )
    )
    task = reply.task
    assert task.labels["mcp/schedule"] == created.schedule_id and task.workflow_id == workflow_id
    got = await client.schedules.GetSchedule(schedule_pb2.GetScheduleRequest(schedule_id=created.schedule_id))
    assert got.info.runs == 1 and got.info.recent_runs[0].task_id == task.task_id


async def test_backfill_of_an_hour_every_ten_minutes_starts_six_tasks_once(served):
    _, client = served
    workflow_id = await sleepy(client)
    created = await client.schedules.CreateSchedule(
        schedule_pb2.CreateScheduleRequest(schedule=a_schedule(workflow_id, every=[seconds(600)], paused=True))
    )
    start = datetime(2026, 1, 5, 9, 0, tzinfo=UTC).timestamp()
    request = schedule_pb2.BackfillScheduleRequest(
        schedule_id=created.schedule_id, start_time=at(start), end_time=at(start + 3600)
    )
    assert (await client.schedules.BackfillSchedule(request)).runs == 6
    found = await tasks_of(client, workflow_id)
    assert sorted(t.labels["mcp/fire-time"] for t in found) == [
        f"2026-01-05T09:{m:02d}:00Z" for m in (0, 10, 20, 30, 40, 50)
    ]
    assert (await client.schedules.BackfillSchedule(request)).runs == 0  # each fire time has its task
    assert len(await tasks_of(client, workflow_id)) == 6


async def test_bad_schedules_are_refused_with_the_field(served):
    _, client = served
    workflow_id = await sleepy(client)
    cases = [
        (a_schedule(workflow_id, cron=["61 * * * *"]), "schedule.spec.cron[0]"),
        (a_schedule(workflow_id, cron=["0 9 * * *"], time_zone="Mars/Olympus"), "schedule.spec.time_zone"),
        (a_schedule(workflow_id, every=[seconds(0.5)]), "schedule.spec.every[0]"),
        (a_schedule(workflow_id), "schedule.spec"),
        (a_schedule(workflow_id, run_at=at(time.time() - 60)), "schedule.spec"),
        (a_schedule("no-such-workflow", every=[seconds(5)]), "schedule.action"),
        (a_schedule(workflow_id, schedule_id="bad id!", every=[seconds(5)]), "schedule.schedule_id"),
    ]
    for schedule, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.schedules.CreateSchedule(schedule_pb2.CreateScheduleRequest(schedule=schedule))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, schedule
        assert field in violations(err.value), (field, violations(err.value))
    ok = a_schedule(workflow_id, every=[seconds(60)])
    await client.schedules.CreateSchedule(schedule_pb2.CreateScheduleRequest(schedule=ok))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.schedules.CreateSchedule(schedule_pb2.CreateScheduleRequest(schedule=ok))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS and error_reason(err.value) == "SCHEDULE_EXISTS"
    listed = await client.schedules.ListSchedules(schedule_pb2.ListSchedulesRequest(page_size=100))
    assert ok.schedule_id in {s.schedule_id for s in listed.schedules}


def fired_at(task: task_pb2.Task) -> float:
    return datetime.strptime(task.labels["mcp/fire-time"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


async def test_buffer_one_starts_a_waiting_fire_time_when_the_previous_task_ends(served):
    _, client = served
    workflow_id = await sleepy(client)
    schedule = a_schedule(workflow_id, every=[seconds(1)], overlap=P.OVERLAP_POLICY_BUFFER_ONE)
    schedule.action.input_data.update({"ms": 1600})
    created = await client.schedules.CreateSchedule(schedule_pb2.CreateScheduleRequest(schedule=schedule))
    await asyncio.sleep(6.0)
    await client.schedules.DeleteSchedule(schedule_pb2.DeleteScheduleRequest(schedule_id=created.schedule_id))
    found = sorted(await tasks_of(client, workflow_id), key=lambda t: t.create_time.ToNanoseconds())
    assert len(found) >= 3
    ended = []
    for task in found:
        done = (await client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=task.task_id))).task
        ended.append(done)
    for earlier, later in itertools.pairwise(ended):  # one at a time
        if earlier.status == S.TASK_STATUS_COMPLETED:
            assert later.create_time.ToNanoseconds() >= earlier.end_time.ToNanoseconds()
    # a buffered fire time started late, when the task before it ended, not at its own time
    assert any(t.create_time.ToNanoseconds() / 1e9 - fired_at(t) > 0.3 for t in found[1:]), [
        t.create_time.ToNanoseconds() / 1e9 - fired_at(t) for t in found
    ]


async def test_cancel_other_cancels_the_unfinished_task_at_the_next_fire_time(served):
    _, client = served
    workflow_id = await sleepy(client)
    schedule = a_schedule(workflow_id, every=[seconds(1)], overlap=P.OVERLAP_POLICY_CANCEL_OTHER)
    schedule.action.input_data.update({"ms": 20_000})
    created = await client.schedules.CreateSchedule(schedule_pb2.CreateScheduleRequest(schedule=schedule))
    await asyncio.sleep(3.5)
    await client.schedules.DeleteSchedule(schedule_pb2.DeleteScheduleRequest(schedule_id=created.schedule_id))
    await asyncio.sleep(0.5)
    found = sorted(await tasks_of(client, workflow_id), key=fired_at)
    assert len(found) >= 3
    assert all(t.status == S.TASK_STATUS_CANCELLED and "schedule" in t.error.message for t in found[:-1])
    assert found[-1].status in (S.TASK_STATUS_RUNNING, S.TASK_STATUS_PENDING)
    await client.tasks.CancelTask(task_pb2.CancelTaskRequest(task_id=found[-1].task_id))


async def test_a_backfill_with_buffer_one_runs_the_first_and_then_the_last_fire_time(served):
    _, client = served
    workflow_id = await sleepy(client)
    schedule = a_schedule(workflow_id, every=[seconds(600)], paused=True)
    schedule.action.input_data.update({"ms": 600})
    created = await client.schedules.CreateSchedule(schedule_pb2.CreateScheduleRequest(schedule=schedule))
    start = datetime(2026, 2, 2, 8, 0, tzinfo=UTC).timestamp()
    request = schedule_pb2.BackfillScheduleRequest(
        schedule_id=created.schedule_id,
        start_time=at(start),
        end_time=at(start + 3600),
        overlap=P.OVERLAP_POLICY_BUFFER_ONE,
    )
    assert (await client.schedules.BackfillSchedule(request)).runs == 1
    async with asyncio.timeout(10):
        while len(found := await tasks_of(client, workflow_id)) < 2:
            await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)
    found = await tasks_of(client, workflow_id)
    # the first at once; of the five that had to wait, the last, once the first had ended
    assert sorted(t.labels["mcp/fire-time"] for t in found) == ["2026-02-02T08:00:00Z", "2026-02-02T08:50:00Z"]
    first, last = sorted(found, key=lambda t: t.labels["mcp/fire-time"])
    done = (await client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=first.task_id))).task
    assert last.create_time.ToNanoseconds() >= done.end_time.ToNanoseconds()
