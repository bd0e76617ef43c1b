"""Which limit applies to a key (RateLimitGate.limit_key): its own, else the template with the
longest prefix of it, else none; learnt from the store's limits, on every store."""

from __future__ import annotations

import pytest

from mcp_server.engine.ports import RateLimitSpec
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
