"""The embedded store's line of calls waiting for a key's units (state/rate_queue.py); its
behaviour as a store is in tests/contract/test_ratelimits_contract.py, on both stores."""

from __future__ import annotations

from mcp_server.engine.ports import WAITER_GRACE_SECONDS
from mcp_server.state.rate_queue import LINE_READ, WaiterLines


def test_a_waiter_that_asks_again_keeps_its_place_past_its_first_turn():
    lines = WaiterLines()
    lines.wait("k", "a", 1, 0, now=0, turn=1)
    lines.wait("k", "b", 1, 0, now=0, turn=2)
    lines.wait("k", "a", 1, 0, now=1, turn=3)  # it came, found no unit, and was told a later turn
    past_first = 1 + WAITER_GRACE_SECONDS + 0.1
    assert lines.ahead("k", "b", 1, 0, now=past_first) == 1  # `a` is still in line, ahead of `b`
    assert lines.waiting("k", now=past_first) == 2
    assert lines.ahead("k", "b", 1, 0, now=3 + WAITER_GRACE_SECONDS + 0.1) == 0  # now it is gone


def test_the_line_orders_by_priority_then_arrival_and_a_newcomer_stands_behind_its_equals():
    lines = WaiterLines()
    lines.wait("k", "low", 2, 0, now=0, turn=10)
    lines.wait("k", "high", 3, 5, now=1, turn=10)
    lines.wait("k", "low-again", 1, 0, now=1, turn=10)
    assert lines.ahead("k", "high", 3, 5, now=2) == 0
    assert lines.ahead("k", "low", 2, 0, now=2) == 3
    assert lines.ahead("k", "low-again", 1, 0, now=2) == 5
    assert lines.ahead("k", "new", 1, 0, now=1) == 6  # behind every one of priority 0, the same instant too
    assert lines.ahead("k", "urgent", 1, 9, now=2) == 0
    lines.leave("k", "high")
    assert lines.ahead("k", "low-again", 1, 0, now=2) == 2


def test_past_the_first_waiters_read_each_counts_at_the_askers_units():
    lines = WaiterLines()
    for i in range(LINE_READ + 10):
        lines.wait("k", f"w{i}", 2, 0, now=i, turn=10_000)
    assert lines.ahead("k", "late", 5, 0, now=10_000) == LINE_READ * 2 + 10 * 5
    assert lines.waiting("k", now=0) == LINE_READ + 10
