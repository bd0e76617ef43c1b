"""Bulk actions on Redis (see BulkActionStore in engine/ports): every key in the slot {bulk}, each
change one script (bulk_lua.py)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from mcp_server.engine.ports.bulk import BulkRecord
from mcp_server.errors import bulk_actions_running
from mcp_server.state.common import now_seconds
from mcp_server.state.redis import bulk_lua as lua
from mcp_server.state.redis.connection import RedisConnection


class RedisBulkActions:
    """BulkActionStore on Redis."""

    def __init__(self, conn: RedisConnection) -> None:
        self.conn = conn
        base = f"{conn.layout.prefix}{{bulk}}:"
        self.prefix = f"{base}a:"
        self.due = f"{base}due"
        self.ended = f"{base}ended"
        self.ids = f"{base}ids"
        self.owners = f"{base}o:"
        self.running = f"{base}run:"
        self.requests = f"{base}req:"
        self._create = conn.register(lua.CREATE)
        self._claim = conn.register(lua.CLAIM)
        self._save = conn.register(lua.SAVE)
        self._purge = conn.register(lua.PURGE)

    async def create_bulk_action(self, record: BulkRecord, max_running: int) -> tuple[BulkRecord, bool]:
        owner = record.owner
        reply = await self.conn.write(
            self._create,
            [
                self.prefix + record.action_id,
                self.due,
                self.ids,
                self.owners + owner,
                self.running + owner,
                self.requests + owner,
            ],
            [
                record.action_id,
                owner,
                record.data,
                record.cursor,
                int(record.admin),
                record.request_id,
                int(now_seconds() * 1000),
                max_running,
                self.prefix,
            ],
        )
        if reply[0] == -1:
            raise bulk_actions_running(owner, max_running)
        if reply[0] == 0:
            return _record(reply[1].decode(), _fields(reply[2])), False
        return replace(record, version=1, running=True), True

    async def get_bulk_action(self, action_id: str) -> BulkRecord | None:
        fields = await self.conn.do(self.conn.r.hgetall(self.prefix + action_id))
        return _record(action_id, fields) if fields else None

    async def list_bulk_actions(self, owner: str | None, before: str, limit: int) -> list[BulkRecord]:
        index = self.ids if owner is None else self.owners + owner
        top = f"({before}" if before else "+"
        ids = [i.decode() for i in await self.conn.do(self.conn.r.zrevrangebylex(index, top, "-", 0, limit))]
        if not ids:
            return []
        async with self.conn.pipeline(transaction=False) as pipe:
            for action_id in ids:
                pipe.hgetall(self.prefix + action_id)
            found = await self.conn.do(pipe.execute())
        return [_record(i, fields) for i, fields in zip(ids, found) if fields]

    async def claim_bulk_actions(self, now_ms: int, lease_ms: int, limit: int) -> list[BulkRecord]:
        reply = await self.conn.write(self._claim, [self.due], [now_ms, lease_ms, limit, self.prefix])
        return [_record(reply[i].decode(), _fields(reply[i + 1])) for i in range(0, len(reply), 2) if reply[i + 1]]

    async def save_bulk_action(self, record: BulkRecord, due_ms: int) -> BulkRecord | None:
        saved = await self.conn.write(
            self._save,
            [self.prefix + record.action_id, self.due, self.ended],
            [
                record.action_id,
                record.version,
                record.data,
                record.cursor,
                int(record.running),
                due_ms,
                int(now_seconds() * 1000),
                self.running,
            ],
        )
        return replace(record, version=record.version + 1) if saved else None

    async def purge_bulk_actions(self, ended_before_ms: int, limit: int) -> int:
        purged = await self.conn.write(
            self._purge, [self.ended, self.ids], [ended_before_ms, limit, self.prefix, self.owners, self.requests]
        )
        return int(purged)


def _fields(flat: list[Any]) -> dict[bytes, bytes]:
    return dict(zip(flat[::2], flat[1::2]))


def _record(action_id: str, fields: dict[bytes, bytes]) -> BulkRecord:
    return BulkRecord(
        action_id,
        fields[b"o"].decode(),
        fields[b"d"],
        fields[b"c"].decode(),
        int(fields[b"v"]),
        fields[b"r"] == b"1",
        fields[b"a"] == b"1",
        fields[b"q"].decode(),
    )
