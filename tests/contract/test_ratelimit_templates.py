"""Which limit applies to a key (RateLimitGate.limit_key): its own, else the template with the
longest prefix of it, else none; learnt from the store's limits, on every store."""

from __future__ import annotations

import pytest

from mcp_server.engine.ports import KeyRoom, RateLimitSpec
from mcp_server.protocols.rate_limits import RateLimitGate

pytestmark = pytest.mark.asyncio


async def test_a_key_falls_under_its_own_limit_then_the_longest_template(store):
    for key in ("tenant:*", "tenant:eu:*", "tenant:eu:acme", "other"):
        await store.rate_limits.put_rate_limit(RateLimitSpec(key, 5, 1.0))
    gate = RateLimitGate(store.rate_limits)
    await gate.refresh()
    assert gate.limit_key("tenant:eu:acme") == "tenant:eu:acme"
    assert gate.limit_key("tenant:eu:zeta") == "tenant:eu:*"
    assert gate.limit_key("tenant:us:zeta") == "tenant:*"
    assert gate.limit_key("tenant:") == "tenant:*"
    assert gate.limit_key("tenant") is None and gate.limit_key("others") is None
    assert gate.limit_key("other") == "other"
    # an unlimited ask costs no round trip, and a templated one takes the template's units
    assert (await gate.take_units([("unlimited", 1e9)])).granted
    for _ in range(5):
        assert (await gate.take_units([("tenant:us:zeta", 1)])).granted
    assert not (await gate.take_units([("tenant:us:zeta", 1)])).granted
    assert (await gate.take_units([("tenant:us:ann", 1)])).granted
    await store.rate_limits.delete_rate_limit("tenant:*")
    await gate.refresh()
    assert gate.limit_key("tenant:us:zeta") is None and gate.limit_key("tenant:eu:zeta") == "tenant:eu:*"


async def test_a_key_s_own_room_is_read_under_its_own_limit_or_its_template_s(store):
    """read_rate_limit: the limit that applies, what this one key has left and when it may take
    one more unit, changing nothing."""
    limits = store.rate_limits
    await limits.put_rate_limit(RateLimitSpec("room:*", 3, 60.0, burst=1))
    await limits.put_rate_limit(RateLimitSpec("room:own", 10, 60.0))
    await limits.put_rate_limit(RateLimitSpec("room:tiny", 0.5, 60.0))
    assert await limits.read_rate_limit("room:acme", "room:*") == KeyRoom(RateLimitSpec("room:*", 3, 60.0, 1), 4, 0)
    for _ in range(3):
        assert (await limits.take_units([("room:acme", 1, "room:*")])).granted
    assert (await limits.take_units([("room:own", 4, "room:own")])).granted
    read = await limits.read_rate_limit("room:acme", "room:*")
    assert read.spec == RateLimitSpec("room:*", 3, 60.0, 1) and read.available == pytest.approx(1, abs=1e-3)
    assert read.next_unit == 0
    for _ in range(3):  # reading takes nothing
        assert (await limits.read_rate_limit("room:acme", "room:*")).available == pytest.approx(1, abs=1e-3)
    assert (await limits.read_rate_limit("room:zeta", "room:*")).available == 4  # another key: all of its own
    own = await limits.read_rate_limit("room:own", "room:own")
    assert own.available == pytest.approx(6, abs=1e-3) and own.next_unit == 0
    assert await limits.read_rate_limit("room:acme", "nothing:*") is None
    assert (await limits.take_units([("room:acme", 1, "room:*")])).granted
    refused = await limits.take_units([("room:acme", 1, "room:*")])
    spent = await limits.read_rate_limit("room:acme", "room:*")
    assert spent.available == 0 and not refused.granted
    # the window holds 4 of 4 until the first grant is a period old: as long as a take would say
    assert spent.next_unit == pytest.approx(refused.retry_after, abs=0.5) and 58 < spent.next_unit <= 60
    assert (await limits.read_rate_limit("room:tiny", "room:tiny")).next_unit is None  # never one unit
