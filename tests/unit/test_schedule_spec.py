"""Fire times of schedule specs: cron in a time zone across DST changes, intervals aligned to the
epoch, run-at, start and end, and what is refused."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf import duration_pb2, timestamp_pb2

from mcp_sdk.proto import schedule_pb2
from mcp_server.errors import ViolationCollector
from mcp_server.schedules.spec import CompiledSpec, compile_spec


def compiled(**fields: object) -> CompiledSpec:
    violations = ViolationCollector()
    spec = compile_spec(schedule_pb2.ScheduleSpec(**fields), violations, "spec")  # type: ignore[arg-type]
    assert spec is not None, violations.violations
    return spec


def first(spec: CompiledSpec, after: datetime, count: int) -> list[str]:
    found = []
    for fire in spec.fires_after(after):
        found.append(fire.astimezone(spec.zone).isoformat())
        if len(found) == count:
            return found
    return found


def test_new_york_spring_forward_fires_a_missing_wall_time_at_the_end_of_the_gap():
    # 2026-03-08 02:00 EST -> 03:00 EDT: 02:30 does not exist that night
    spec = compiled(cron=["30 2 * * *"], time_zone="America/New_York")
    assert first(spec, datetime(2026, 3, 6, 12, tzinfo=UTC), 3) == [
        "2026-03-07T02:30:00-05:00",
        "2026-03-08T03:00:00-04:00",
        "2026-03-09T02:30:00-04:00",
    ]


def test_new_york_fall_back_fires_a_twice_happening_wall_time_once_at_its_first_occurrence():
    # 2026-11-01 02:00 EDT -> 01:00 EST: 01:30 happens twice
    spec = compiled(cron=["30 1 * * *"], time_zone="America/New_York")
    assert first(spec, datetime(2026, 10, 31, 12, tzinfo=UTC), 2) == [
        "2026-11-01T01:30:00-04:00",
        "2026-11-02T01:30:00-05:00",
    ]


def test_london_half_hourly_across_the_autumn_change_fires_each_wall_time_once():
    # 2026-10-25 02:00 BST -> 01:00 GMT: 01:00 and 01:30 happen twice, and fire once
    spec = compiled(cron=["*/30 * * * *"], time_zone="Europe/London")
    assert first(spec, datetime(2026, 10, 24, 23, 50, tzinfo=UTC), 5) == [
        "2026-10-25T01:00:00+01:00",
        "2026-10-25T01:30:00+01:00",
        "2026-10-25T02:00:00+00:00",
        "2026-10-25T02:30:00+00:00",
        "2026-10-25T03:00:00+00:00",
    ]


def test_london_spring_forward_nine_oclock_is_still_nine_oclock_local():
    spec = compiled(cron=["0 9 * * *"], time_zone="Europe/London")
    assert first(spec, datetime(2026, 3, 28, 12, tzinfo=UTC), 2) == [
        "2026-03-29T09:00:00+01:00",
        "2026-03-30T09:00:00+01:00",
    ]


def test_seconds_come_first_in_six_fields_and_aliases_work():
    spec = compiled(cron=["*/20 * * * * *", "@hourly"])
    assert first(spec, datetime(2026, 1, 1, 0, 59, 10, tzinfo=UTC), 4) == [
        "2026-01-01T00:59:20+00:00",
        "2026-01-01T00:59:40+00:00",
        "2026-01-01T01:00:00+00:00",
        "2026-01-01T01:00:20+00:00",
    ]


def test_intervals_align_to_the_epoch_and_merge_with_run_at_between_start_and_end():
    every = duration_pb2.Duration(seconds=600)
    run_at = timestamp_pb2.Timestamp()
    run_at.FromDatetime(datetime(2026, 1, 1, 0, 15, tzinfo=UTC))
    start = timestamp_pb2.Timestamp()
    start.FromDatetime(datetime(2026, 1, 1, 0, 5, tzinfo=UTC))
    end = timestamp_pb2.Timestamp()
    end.FromDatetime(datetime(2026, 1, 1, 0, 30, tzinfo=UTC))
    spec = compiled(every=[every], run_at=run_at, start_time=start, end_time=end)
    assert first(spec, datetime(2025, 12, 31, tzinfo=UTC), 10) == [
        "2026-01-01T00:10:00+00:00",
        "2026-01-01T00:15:00+00:00",
        "2026-01-01T00:20:00+00:00",
    ]


def test_jitter_is_the_same_for_the_same_fire_time_and_within_its_bound():
    spec = compiled(every=[duration_pb2.Duration(seconds=60)], jitter=duration_pb2.Duration(seconds=10))
    fire = datetime(2026, 1, 1, tzinfo=UTC)
    assert spec.jitter_of("a", fire) == spec.jitter_of("a", fire)
    delays = {spec.jitter_of(f"s{i}", fire) for i in range(50)}
    assert all(0 <= d < 10 for d in delays) and len(delays) > 40


def test_what_is_refused_names_its_field():
    violations = ViolationCollector()
    spec = schedule_pb2.ScheduleSpec(
        cron=["* * *", "0 25 * * *"],
        every=[duration_pb2.Duration(nanos=500_000_000)],
        time_zone="Nowhere/Special",
        jitter=duration_pb2.Duration(seconds=-1),
    )
    assert compile_spec(spec, violations, "spec") is None
    fields = {v.field for v in violations.violations}
    assert fields == {"spec.cron[0]", "spec.cron[1]", "spec.every[0]", "spec.time_zone", "spec.jitter"}
    never = ViolationCollector()
    huge = duration_pb2.Duration(seconds=10**12)
    assert compile_spec(schedule_pb2.ScheduleSpec(cron=["0 0 30 2 *"], every=[huge]), never, "spec") is None
    assert {v.field for v in never.violations} == {"spec.cron[0]", "spec.every[0]"}
    nothing = ViolationCollector()
    assert compile_spec(schedule_pb2.ScheduleSpec(), nothing, "spec") is None
    assert [v.field for v in nothing.violations] == ["spec"]
