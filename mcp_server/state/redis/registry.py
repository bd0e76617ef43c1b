"""Protocol instances and breaker states on Redis (see RegistryStore in engine/ports): two hashes in
the slot tagged {reg}."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mcp_sdk.proto import registry_pb2
from mcp_server.state.redis.connection import RedisConnection


class RedisRegistry:
    """RegistryStore on Redis."""

    def __init__(self, conn: RedisConnection) -> None:
        self.conn = conn
        self.layout = conn.layout
        self._remove_entries = conn.register(REMOVE_UNCHANGED)

    async def put_protocol(self, entry: registry_pb2.RegisteredProtocol) -> None:
        await self.conn.do(
            self.conn.r.hset(self.layout.protocols, _instance(entry), entry.SerializeToString(deterministic=True))
        )

    async def remove_protocol_entries(self, entries: Sequence[registry_pb2.RegisteredProtocol]) -> list[int]:
        if not entries:
            return []
        args: list[Any] = []
        for entry in entries:
            args += [_instance(entry), entry.SerializeToString(deterministic=True)]
        removed = await self.conn.do(self._remove_entries(keys=[self.layout.protocols], args=args))
        return [int(index) for index in removed]

    async def delete_protocols(self, name: str = "", address: str = "") -> int:
        entries = await self.list_protocol_entries()
        doomed = [_instance(e) for e in entries if e.manifest.name == name or (address and e.address == address)]
        if not doomed:
            return 0
        return int(await self.conn.do(self.conn.r.hdel(self.layout.protocols, *doomed)))

    async def list_protocol_entries(self) -> list[registry_pb2.RegisteredProtocol]:
        values = await self.conn.do(self.conn.r.hgetall(self.layout.protocols))
        entries = [registry_pb2.RegisteredProtocol.FromString(v) for v in values.values()]
        return sorted(entries, key=lambda e: (e.manifest.name, e.address))

    async def put_breaker_state(self, protocol: str, state: str) -> None:
        await self.conn.do(self.conn.r.hset(self.layout.breakers, protocol, state))

    async def breaker_states(self) -> dict[str, str]:
        values = await self.conn.do(self.conn.r.hgetall(self.layout.breakers))
        return {k.decode(): v.decode() for k, v in values.items()}


def _instance(entry: registry_pb2.RegisteredProtocol) -> str:
    """The registry's field for one instance: protocol name and address."""
    return f"{entry.manifest.name}\0{entry.address}"


# KEYS: the registry hash; ARGV: (field, value) pairs -> the 0-based indexes of the pairs deleted:
# each only if its field still holds exactly that value (a registration renewed meanwhile stays)
REMOVE_UNCHANGED = """
local removed = {}
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    redis.call('HDEL', KEYS[1], ARGV[i])
    table.insert(removed, (i - 1) / 2)
  end
end
return removed
"""
