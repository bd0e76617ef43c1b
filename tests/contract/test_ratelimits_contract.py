"""The RateLimitStore contract: every backend grants the same units, atomically, all or nothing."""

from __future__ import annotations

import asyncio
import time

import pytest

from mcp_server.engine.ports import RateLimitSpec

pytestmark = pytest.mark.asyncio


async def test_a_key_without_a_limit_grants_anything(store):
    assert (await store.rate_limits.take_units([("free", 1e9)])).granted
    assert await store.rate_limits.list_rate_limits() == []


async def test_a_limit_grants_its_units_then_says_when_to_ask_again(store):
    await store.rate_limits.put_rate_limit(RateLimitSpec("five", 5, 1.0))
    for _ in range(5):
        assert (await store.rate_limits.take_units([("five", 1)])).granted
    refused = await store.rate_limits.take_units([("five", 1)])
    assert not refused.granted and refused.key == "five" and 0 < refused.retry_after <= 1.0
    [(spec, room)] = await store.rate_limits.list_rate_limits()
    assert spec == RateLimitSpec("five", 5, 1.0) and room < 1
    await asyncio.sleep(refused.retry_after + 0.02)
    assert (await store.rate_limits.take_units([("five", 1)])).granted


async def test_several_keys_are_taken_all_or_none(store):
    await store.rate_limits.put_rate_limit(RateLimitSpec("a", 10, 60.0))
    await store.rate_limits.put_rate_limit(RateLimitSpec("b", 1, 60.0))
    assert (await store.rate_limits.take_units([("a", 3), ("b", 1)])).granted
    refused = await store.rate_limits.take_units([("a", 3), ("b", 1)])
    assert not refused.granted and refused.key == "b" and refused.retry_after > 50
    rooms = {spec.key: room for spec, room in await store.rate_limits.list_rate_limits()}
    assert rooms["a"] == pytest.approx(7, abs=0.01)  # nothing of `a` was taken by the refused ask


async def test_an_ask_no_limit_can_grant_is_too_large(store):
    await store.rate_limits.put_rate_limit(RateLimitSpec("small", 2, 1.0, burst=1))
    refused = await store.rate_limits.take_units([("small", 4)])
    assert refused.too_large and refused.key == "small"
    assert (await store.rate_limits.take_units([("small", 3)])).granted  # limit + burst at once


async def test_no_window_of_one_period_holds_more_than_limit_plus_burst(store):
    await store.rate_limits.put_rate_limit(RateLimitSpec("w", 4, 0.5, burst=2))
    granted: list[float] = []
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        answer = await store.rate_limits.take_units([("w", 1)])
        if answer.granted:
            granted.append(time.monotonic())
        else:
            await asyncio.sleep(min(answer.retry_after, 0.05))
    assert len(granted) >= 4 * 3  # the long-run rate is reached
    for start in granted:
        assert sum(1 for t in granted if start <= t < start + 0.5 - 0.01) <= 6


async def test_a_deleted_limit_no_longer_limits(store):
    await store.rate_limits.put_rate_limit(RateLimitSpec("gone", 1, 60.0))
    assert (await store.rate_limits.take_units([("gone", 1)])).granted
    assert not (await store.rate_limits.take_units([("gone", 1)])).granted
    assert await store.rate_limits.delete_rate_limit("gone")
    assert not await store.rate_limits.delete_rate_limit("gone")
    assert (await store.rate_limits.take_units([("gone", 100)])).granted
