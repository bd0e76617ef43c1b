"""Protocol instances and breaker states in the embedded store (see RegistryStore in engine/ports)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from mcp_sdk.proto import registry_pb2
from mcp_server.state.sqlite.database import SqliteDatabase


class SqliteRegistry:
    """RegistryStore on SQLite."""

    def __init__(self, db: SqliteDatabase) -> None:
        self.db = db

    async def put_protocol(self, entry: registry_pb2.RegisteredProtocol) -> None:
        await self.db.write(
            "INSERT OR REPLACE INTO protocol_instances VALUES (?,?,?)",
            (entry.manifest.name, entry.address, entry.SerializeToString(deterministic=True)),
        )

    async def remove_protocol_entries(self, entries: Sequence[registry_pb2.RegisteredProtocol]) -> list[int]:
        def remove(db: sqlite3.Connection) -> list[int]:
            with db:
                return [
                    index
                    for index, e in enumerate(entries)
                    if db.execute(
                        "DELETE FROM protocol_instances WHERE name=? AND address=? AND data=?",
                        (e.manifest.name, e.address, e.SerializeToString(deterministic=True)),
                    ).rowcount
                ]

        return await self.db.run(remove)

    async def delete_protocols(self, name: str = "", address: str = "") -> int:
        return await self.db.write("DELETE FROM protocol_instances WHERE name=? OR address=?", (name, address))

    async def list_protocol_entries(self) -> list[registry_pb2.RegisteredProtocol]:
        rows = await self.db.rows("SELECT data FROM protocol_instances ORDER BY name, address")
        return [registry_pb2.RegisteredProtocol.FromString(r[0]) for r in rows]

    async def put_breaker_state(self, protocol: str, state: str) -> None:
        await self.db.write("INSERT OR REPLACE INTO breakers VALUES (?, ?)", (protocol, state))

    async def breaker_states(self) -> dict[str, str]:
        return {str(r[0]): str(r[1]) for r in await self.db.rows("SELECT protocol, state FROM breakers")}
