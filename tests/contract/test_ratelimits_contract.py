"""The RateLimitStore contract: every backend grants the same units, atomically, all or nothing."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from mcp_server.engine.ports import RateLimitSpec, waiter_name

pytestmark = pytest.mark.asyncio


async def test_a_key_without_a_limit_grants_anything(store):
    assert (await store.rate_limits.take_units([("free", 1e9, "free")])).granted
    assert await store.rate_limits.list_rate_limits() == []


async def test_a_limit_grants_its_units_then_says_when_to_ask_again(store):
    await store.rate_limits.put_rate_limit(RateLimitSpec("five", 5, 1.0))
    for _ in range(5):
        assert (await store.rate_limits.take_units([("five", 1, "five")])).granted
    refused = await store.rate_limits.take_units([("five", 1, "five")])
    assert not refused.granted and refused.key == "five" and 0 < refused.retry_after <= 1.0
    [(spec, room)] = await store.rate_limits.list_rate_limits()
    assert spec == RateLimitSpec("five", 5, 1.0) and room < 1
    await asyncio.sleep(refused.retry_after + 0.02)
    assert (await store.rate_limits.take_units([("five", 1, "five")])).granted


async def test_several_keys_are_taken_all_or_none(store):
    await store.rate_limits.put_rate_limit(RateLimitSpec("a", 10, 60.0))
    await store.rate_limits.put_rate_limit(RateLimitSpec("b", 1, 60.0))
    assert (await store.rate_limits.take_units([("a", 3, "a"), ("b", 1, "b")])).granted
    refused = await store.rate_limits.take_units([("a", 3, "a"), ("b", 1, "b")])
    assert not refused.granted and refused.key == "b" and refused.retry_after > 50
    rooms = {spec.key: room for spec, room in await store.rate_limits.list_rate_limits()}
    assert rooms["a"] == pytest.approx(7, abs=0.01)  # nothing of `a` was taken by the refused ask


async def test_an_ask_no_limit_can_grant_is_too_large(store):
    await store.rate_limits.put_rate_limit(RateLimitSpec("small", 2, 1.0, burst=1))
    refused = await store.rate_limits.take_units([("small", 4, "small")])
    assert refused.too_large and refused.key == "small"
    assert (await store.rate_limits.take_units([("small", 3, "small")])).granted  # limit + burst at once


async def test_no_window_of_one_period_holds_more_than_limit_plus_burst(store):
    await store.rate_limits.put_rate_limit(RateLimitSpec("w", 4, 0.5, burst=2))
    granted: list[float] = []
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        answer = await store.rate_limits.take_units([("w", 1, "w")])
        if answer.granted:
            granted.append(time.monotonic())
        else:
            await asyncio.sleep(min(answer.retry_after, 0.05))
    assert len(granted) >= 4 * 3  # the long-run rate is reached
    for start in granted:
        assert sum(1 for t in granted if start <= t < start + 0.5 - 0.01) <= 6


async def test_a_deleted_limit_no_longer_limits(store):
    await store.rate_limits.put_rate_limit(RateLimitSpec("gone", 1, 60.0))
    assert (await store.rate_limits.take_units([("gone", 1, "gone")])).granted
    assert not (await store.rate_limits.take_units([("gone", 1, "gone")])).granted
    assert await store.rate_limits.delete_rate_limit("gone")
    assert not await store.rate_limits.delete_rate_limit("gone")
    assert (await store.rate_limits.take_units([("gone", 100, "gone")])).granted


async def test_keys_under_a_template_are_limited_each_on_its_own(store):
    await store.rate_limits.put_rate_limit(RateLimitSpec("tenant:*", 2, 60.0))
    for tenant in ("acme", "zeta"):
        for _ in range(2):
            assert (await store.rate_limits.take_units([(f"tenant:{tenant}", 1, "tenant:*")])).granted
        refused = await store.rate_limits.take_units([(f"tenant:{tenant}", 1, "tenant:*")])
        assert not refused.granted and refused.key == f"tenant:{tenant}" and 50 < refused.retry_after <= 60
    # the template lists alone, its own room untouched by its keys
    [(spec, room)] = await store.rate_limits.list_rate_limits()
    assert spec.key == "tenant:*" and room == pytest.approx(2)
    # too large for the template is too large for each of its keys
    assert (await store.rate_limits.take_units([("tenant:new", 3, "tenant:*")])).too_large


async def test_own_and_templated_keys_are_taken_all_or_none(store):
    await store.rate_limits.put_rate_limit(RateLimitSpec("model", 10, 60.0))
    await store.rate_limits.put_rate_limit(RateLimitSpec("user:*", 1, 60.0))
    asks = [("model", 3, "model"), ("user:ann", 1, "user:*")]
    assert (await store.rate_limits.take_units(asks)).granted
    refused = await store.rate_limits.take_units(asks)
    assert not refused.granted and refused.key == "user:ann"
    rooms = {spec.key: room for spec, room in await store.rate_limits.list_rate_limits()}
    assert rooms["model"] == pytest.approx(7, abs=0.01)  # nothing of `model` was taken by the refused ask
    assert (await store.rate_limits.take_units([("model", 3, "model"), ("user:bob", 1, "user:*")])).granted


async def test_a_templated_key_is_forgotten_once_it_could_hold_nothing_back(store):
    """Keys made from tenant or user ids come and go: the store keeps nothing of one that has
    been quiet for its period (and whose GCRA has caught up), and it starts afresh after."""
    await store.rate_limits.put_rate_limit(RateLimitSpec("id:*", 2, 0.2))
    for _ in range(2):
        assert (await store.rate_limits.take_units([("id:quiet", 1, "id:*")])).granted
    assert not (await store.rate_limits.take_units([("id:quiet", 1, "id:*")])).granted
    await asyncio.sleep(1.5)  # the period, the GCRA's catch-up and Redis's second of slack
    if hasattr(store.rate_limits, "conn"):  # Redis: the key's hash and grants expired
        layout = store.rate_limits.conn.layout
        names = [layout.rate_state_prefix + "id:quiet", layout.rate_grants_prefix + "id:quiet"]
        assert await store.rate_limits.conn.r.exists(*names) == 0
    else:  # SQLite: dropped by the takes that forget now and then
        for i in range(64):
            assert (await store.rate_limits.take_units([(f"id:other{i}", 1, "id:*")])).granted

        def left(db):
            state = db.execute("SELECT COUNT(*) FROM rate_state WHERE key='id:quiet'").fetchone()[0]
            return state + db.execute("SELECT COUNT(*) FROM rate_grants WHERE key='id:quiet'").fetchone()[0]

        assert await store.rate_limits.db.run(left) == 0
    for _ in range(2):
        assert (await store.rate_limits.take_units([("id:quiet", 1, "id:*")])).granted


async def test_the_keys_of_every_limit_are_read_without_their_room(store):
    prefix = f"keys{time.monotonic_ns()}:"
    before = await store.rate_limits.rate_limit_keys()
    for key in ("a", "b", "tier:*"):
        await store.rate_limits.put_rate_limit(RateLimitSpec(prefix + key, 5, 1.0, 0))
    await store.rate_limits.take_units([(prefix + "a", 2.0, prefix + "a")])
    assert await store.rate_limits.rate_limit_keys() - before == {prefix + "a", prefix + "b", prefix + "tier:*"}
    assert await store.rate_limits.delete_rate_limit(prefix + "b")
    assert await store.rate_limits.rate_limit_keys() - before == {prefix + "a", prefix + "tier:*"}
    listed = {spec.key for spec, _ in await store.rate_limits.list_rate_limits()}
    assert await store.rate_limits.rate_limit_keys() == listed  # the same keys as the full listing


async def test_many_limits_are_listed_each_once_with_their_room(store):
    """More limits than one read of their room takes (Redis reads them a few hundred a script, so
    that no script holds it long): every one is listed once, in key order, with its own room."""
    for i in range(600):
        await store.rate_limits.put_rate_limit(RateLimitSpec(f"k{i:03d}", 10, 60.0))
    assert (await store.rate_limits.take_units([("k007", 4.0, "k007")])).granted
    listed = await store.rate_limits.list_rate_limits()
    assert [spec.key for spec, _ in listed] == [f"k{i:03d}" for i in range(600)]
    rooms = {spec.key: room for spec, room in listed}
    assert rooms["k007"] == pytest.approx(6, abs=0.01) and rooms["k008"] == pytest.approx(10, abs=0.01)


async def test_calls_waiting_for_a_key_are_told_their_turns_one_after_another(store):
    """Refused calls wait in line: each is told when its own turn comes, after the turns of
    those ahead of it (not all the same moment, to come back together and race)."""
    await store.rate_limits.put_rate_limit(RateLimitSpec("line", 1, 0.1))  # one unit every 100 ms
    assert (await store.rate_limits.take_units([("line", 1, "line")], "early")).granted
    turns = []
    for name in ("a", "b", "c", "d"):
        refused = await store.rate_limits.take_units([("line", 1, "line")], name)
        assert not refused.granted and refused.key == "line"
        turns.append(refused.retry_after)
    # a's turn in about 100 ms, b's a unit later, and so on (less what passed between the asks)
    for earlier, later in itertools.pairwise(turns):
        assert later - earlier == pytest.approx(0.1, abs=0.03)
    # b, come early at a's turn, finds the unit kept for a; a takes it; then b at its own turn
    await asyncio.sleep(turns[0] + 0.01)
    assert not (await store.rate_limits.take_units([("line", 1, "line")], "b")).granted
    assert (await store.rate_limits.take_units([("line", 1, "line")], "a")).granted
    late = await store.rate_limits.take_units([("line", 1, "line")], "latecomer")
    assert not late.granted and late.retry_after > 0.25  # behind b, c and d
    await asyncio.sleep(0.12)
    assert (await store.rate_limits.take_units([("line", 1, "line")], "b")).granted


async def test_an_ask_without_a_name_does_not_wait_in_line(store):
    await store.rate_limits.put_rate_limit(RateLimitSpec("plain", 10, 1.0))
    for _ in range(10):
        assert (await store.rate_limits.take_units([("plain", 1, "plain")])).granted
    first = await store.rate_limits.take_units([("plain", 1, "plain")])
    second = await store.rate_limits.take_units([("plain", 1, "plain")])
    assert second.retry_after == pytest.approx(first.retry_after, abs=0.03)


async def test_a_waiter_that_misses_its_turn_loses_its_place(store, monkeypatch):
    monkeypatch.setattr("mcp_server.state.rate_queue.WAITER_GRACE_SECONDS", 0.1)
    monkeypatch.setattr("mcp_server.state.redis.ratelimits.WAITER_GRACE_SECONDS", 0.1)
    await store.rate_limits.put_rate_limit(RateLimitSpec("gone", 1, 0.2))  # one unit every 200 ms
    assert (await store.rate_limits.take_units([("gone", 1, "gone")], "early")).granted
    assert not (await store.rate_limits.take_units([("gone", 1, "gone")], "vanished")).granted
    refused = await store.rate_limits.take_units([("gone", 1, "gone")], "patient")
    assert refused.retry_after == pytest.approx(0.4, abs=0.05)  # behind `vanished`
    # `vanished` does not come for its unit at its turn (200 ms): 100 ms later it has lost its
    # place, and at its own turn `patient` is not held back by it
    await asyncio.sleep(refused.retry_after + 0.01)
    assert (await store.rate_limits.take_units([("gone", 1, "gone")], "patient")).granted
    back = await store.rate_limits.take_units([("gone", 1, "gone")], "vanished")
    assert not back.granted and back.retry_after <= 0.2 + 0.01  # at the end of an empty line


async def test_a_call_waits_in_the_line_of_each_key_that_refused_it(store):
    await store.rate_limits.put_rate_limit(RateLimitSpec("wide", 100, 1.0))
    await store.rate_limits.put_rate_limit(RateLimitSpec("narrow", 1, 60.0))
    assert (await store.rate_limits.take_units([("wide", 1, "wide"), ("narrow", 1, "narrow")], "first")).granted
    refused = await store.rate_limits.take_units([("wide", 1, "wide"), ("narrow", 1, "narrow")], "second")
    assert refused.key == "narrow" and refused.retry_after > 50
    # `wide` did not refuse it: nothing of `wide` is kept for it
    rooms = {spec.key: room for spec, room in await store.rate_limits.list_rate_limits()}
    assert rooms["wide"] == pytest.approx(99, abs=0.1)
    assert (await store.rate_limits.take_units([("wide", 99, "wide")], "other")).granted


async def test_a_keys_line_is_read_with_its_room(store):
    await store.rate_limits.put_rate_limit(RateLimitSpec("busy", 1, 60.0))
    assert (await store.rate_limits.take_units([("busy", 1, "busy")], "first")).granted
    for name in ("second", "third", "second"):  # asking again keeps one place
        assert not (await store.rate_limits.take_units([("busy", 1, "busy")], name)).granted
    assert not (await store.rate_limits.take_units([("busy", 1, "busy")])).granted  # a submission: not in line
    read = await store.rate_limits.read_rate_limit("busy", "busy")
    assert read is not None and read.waiting == 2 and read.available == 0


async def test_a_call_of_higher_priority_waits_ahead_of_those_that_came_first(store):
    await store.rate_limits.put_rate_limit(RateLimitSpec("prio", 1, 0.1))  # one unit every 100 ms
    assert (await store.rate_limits.take_units([("prio", 1, "prio")], "early")).granted
    low = await store.rate_limits.take_units([("prio", 1, "prio")], "low", 0)
    assert (await store.rate_limits.take_units([("prio", 1, "prio")], "later", 0)).retry_after > low.retry_after
    high = await store.rate_limits.take_units([("prio", 1, "prio")], "high", 5)
    assert high.retry_after == pytest.approx(low.retry_after, abs=0.03)  # the first turn is now its
    again = await store.rate_limits.take_units([("prio", 1, "prio")], "low", 0)  # asking again: behind `high`
    assert again.retry_after == pytest.approx(high.retry_after + 0.1, abs=0.03)
    await asyncio.sleep(high.retry_after + 0.01)
    assert not (await store.rate_limits.take_units([("prio", 1, "prio")], "low", 0)).granted
    assert (await store.rate_limits.take_units([("prio", 1, "prio")], "high", 5)).granted
    # a newcomer of the lowest priority stands behind every one of them
    last = await store.rate_limits.take_units([("prio", 1, "prio")], "lowest", -3)
    assert last.retry_after > 0.15


async def test_a_waiter_that_gives_up_leaves_the_line_at_once(store):
    await store.rate_limits.put_rate_limit(RateLimitSpec("leave", 1, 0.2))  # one unit every 200 ms
    await store.rate_limits.put_rate_limit(RateLimitSpec("other", 1, 0.2))
    assert (await store.rate_limits.take_units([("leave", 1, "leave")], "early")).granted
    assert not (await store.rate_limits.take_units([("leave", 1, "leave")], "cancelled")).granted
    behind = await store.rate_limits.take_units([("leave", 1, "leave")], "behind")
    assert behind.retry_after == pytest.approx(0.4, abs=0.05)
    await store.rate_limits.leave_lines(["leave", "other", "never-limited"], "cancelled")
    read = await store.rate_limits.read_rate_limit("leave", "leave")
    assert read is not None and read.waiting == 1
    again = await store.rate_limits.take_units([("leave", 1, "leave")], "behind")
    assert again.retry_after <= 0.2 + 0.01  # first in line now


async def test_a_limit_put_over_another_counts_what_was_granted_at_the_new_pace(store):
    """Raised from 1 a minute to 10 a second, the unit granted under the old limit holds the next
    one back a tenth of a second, not a minute (and counts in the new window: 9 more now); lowered
    again to 1 a minute, the units granted under the fast one hold the next back nine minutes at
    the slow pace, not one."""
    limits = store.rate_limits
    await limits.put_rate_limit(RateLimitSpec("paced", 1, 60.0))
    assert (await limits.take_units([("paced", 1, "paced")])).granted
    assert (await limits.take_units([("paced", 1, "paced")])).retry_after > 50

    await limits.put_rate_limit(RateLimitSpec("paced", 10, 1.0))
    await asyncio.sleep(0.15)
    for _ in range(9):
        assert (await limits.take_units([("paced", 1, "paced")])).granted
    assert not (await limits.take_units([("paced", 1, "paced")])).granted

    await limits.put_rate_limit(RateLimitSpec("paced", 1, 60.0))
    refused = await limits.take_units([("paced", 1, "paced")])
    assert not refused.granted and refused.retry_after > 8 * 60


async def test_a_template_put_again_rescales_what_each_of_its_keys_was_granted_waiting_or_not(store):
    """Two keys under a template of 1 a minute each take a unit; nobody waits. Raised to 10 a
    second, the next call of either goes within a tenth of a second, not a minute on: the store
    knows the template's keys that were granted ahead without a call in line to name them."""
    limits = store.rate_limits
    await limits.put_rate_limit(RateLimitSpec("tenant:*", 1, 60.0))
    for key in ("tenant:a", "tenant:b"):
        assert (await limits.take_units([(key, 1, "tenant:*")])).granted
        assert (await limits.take_units([(key, 1, "tenant:*")])).retry_after > 50
    await limits.put_rate_limit(RateLimitSpec("tenant:*", 10, 1.0))
    await asyncio.sleep(0.15)
    for key in ("tenant:a", "tenant:b"):
        assert (await limits.take_units([(key, 1, "tenant:*")])).granted


async def test_the_tasks_waiting_in_a_line_come_front_first_as_many_as_asked(store):
    """What a leave reads to make the parked calls at the front of a line due: higher priority
    first, then first come first."""
    await store.rate_limits.put_rate_limit(RateLimitSpec("line", 1, 60))
    assert (await store.rate_limits.take_units([("line", 1, "line")])).granted
    for task, priority in [("t-early", 0), ("t-late", 0), ("t-urgent", 5)]:
        assert not (await store.rate_limits.take_units([("line", 1, "line")], waiter_name(task, "s"), priority)).granted
    assert await store.rate_limits.waiting_tasks("line", 2) == ["t-urgent", "t-early"]
    assert await store.rate_limits.waiting_tasks("line") == ["t-urgent", "t-early", "t-late"]
