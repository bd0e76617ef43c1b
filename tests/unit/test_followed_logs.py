"""A followed log keeps its latest events only, and hands out what follows a sequence in order
or says it does not have them (the watcher then reads the store)."""

from __future__ import annotations

from mcp_sdk.proto import task_pb2
from mcp_server.engine.events import make_event
from mcp_server.state import followers
from mcp_server.state.followers import FollowedLog

PROGRESS = task_pb2.TASK_EVENT_TYPE_PROGRESS


def events(first: int, last: int, filler: int = 0) -> list[task_pb2.TaskEvent]:
    data = {"filler": "x" * filler} if filler else None
    return [make_event("t", n, PROGRESS, data=data) for n in range(first, last + 1)]


def test_a_log_keeps_its_latest_events_and_says_when_it_no_longer_has_the_ones_asked_for():
    log = FollowedLog(0)
    log.add(events(1, followers.KEPT_EVENTS + 500))
    assert len(log.events) == followers.KEPT_EVENTS and log.start == 500
    assert [e.sequence for e in log.after(followers.KEPT_EVENTS + 497) or []] == [
        followers.KEPT_EVENTS + 498,
        followers.KEPT_EVENTS + 499,
        followers.KEPT_EVENTS + 500,
    ]
    assert log.after(499) is None  # forgotten: the caller reads the store
    assert log.after(500) == log.events and log.after(followers.KEPT_EVENTS + 500) == []


def test_a_log_of_large_events_keeps_at_most_its_bytes_but_always_the_newest():
    log = FollowedLog(10)
    log.add(events(11, 40, filler=1024 * 1024))  # 30 MB
    kept = sum(e.ByteSize() for e in log.events)
    assert kept == log.kept_bytes <= followers.KEPT_BYTES and log.events[-1].sequence == 40
    assert log.start == log.events[0].sequence - 1 and log.after(log.start) == log.events
    huge = FollowedLog(0)
    huge.add(events(1, 1, filler=followers.KEPT_BYTES + 1))  # one event past the bytes is still kept
    assert [e.sequence for e in huge.events] == [1]


def test_events_that_arrive_ahead_of_a_gap_join_in_order_and_are_kept_within_the_bounds():
    log = FollowedLog(0)
    log.add(events(3, 5))
    assert log.events == [] and log.after(0) == []
    log.add(events(1, 2))
    assert [e.sequence for e in log.after(0) or []] == [1, 2, 3, 4, 5]
