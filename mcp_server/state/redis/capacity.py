"""The capacity ledger on Redis (see CapacityLedger in engine/ports), in one slot tagged {cap}."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mcp_server.engine.ports import CapacityRequest, CapacitySlice
from mcp_server.state.common import (
    now_seconds,
)
from mcp_server.state.redis import capacity_lua as lua
from mcp_server.state.redis.connection import RedisConnection
from mcp_server.state.redis.opening import text


class RedisCapacity:
    """CapacityLedger on Redis."""

    def __init__(self, conn: RedisConnection) -> None:
        self.conn = conn
        self.layout = conn.layout
        self._acquire = conn.register(lua.ACQUIRE_CAPACITY)
        self._release_capacity = conn.register(lua.RELEASE_CAPACITY)
        self._renew_capacity = conn.register(lua.RENEW_CAPACITY)

    async def acquire_capacity(self, request: CapacityRequest) -> str | None:
        granted = await self.acquire_capacity_slice(request)
        return granted.address if granted else None

    async def acquire_capacity_slice(self, request: CapacityRequest) -> CapacitySlice | None:
        now_ms = int(now_seconds() * 1000)
        args: list[Any] = [
            request.member,
            request.waiter_id,
            -request.priority,
            request.needs,
            now_ms,
            now_ms + int(request.wait_seconds * 1000),
            now_ms + int(request.lease_seconds * 1000),
            max(1, request.units),
        ]
        for address, capacity in request.candidates.items():
            args += [address, capacity]
        address, units, waiting = await self.conn.do(self._acquire(keys=list(self.layout.capacity), args=args))
        return CapacitySlice(text(address), int(units), int(waiting)) if address else None

    async def release_capacity(self, waiter_id: str, member: str, units: int = 0) -> int:
        return int(
            await self.conn.do(
                self._release_capacity(keys=list(self.layout.capacity), args=[member, waiter_id, max(0, units)])
            )
        )

    async def capacity_waiting(self) -> int:
        return int(await self.conn.do(self.conn.r.zcard(self.layout.capacity[2])))

    async def renew_capacity(self, waiter_ids: Sequence[str], lease_seconds: float) -> list[str]:
        if not waiter_ids:
            return []
        expiry = int((now_seconds() + lease_seconds) * 1000)
        missing = await self.conn.do(
            self._renew_capacity(keys=list(self.layout.capacity[:2]), args=[expiry, *waiter_ids])
        )
        return [text(m) for m in missing]

    async def capacity_in_use(self) -> dict[str, str]:
        values = await self.conn.do(self.conn.r.hgetall(self.layout.capacity[5]))
        return {text(k): text(v) for k, v in values.items()}
