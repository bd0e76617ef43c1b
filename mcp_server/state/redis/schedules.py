"""Schedules on Redis (see ScheduleStore in engine/ports): every key in the slot {sch}, each
change one script (schedules_lua.py)."""

from __future__ import annotations

import json
from typing import Any

from mcp_server.engine.ports.schedules import RECENT_RUNS, ScheduleProgress, ScheduleRecord
from mcp_server.state.common import stored_run
from mcp_server.state.redis import schedules_lua as lua
from mcp_server.state.redis.connection import RedisConnection


class RedisSchedules:
    """ScheduleStore on Redis."""

    def __init__(self, conn: RedisConnection) -> None:
        self.conn = conn
        base = f"{conn.layout.prefix}{{sch}}:"
        self.prefix = f"{base}s:"
        self.due = f"{base}due"
        self.ids = f"{base}ids"
        self.owners = f"{base}o:"
        self._create = conn.register(lua.CREATE_SCHEDULE)
        self._update = conn.register(lua.UPDATE_SCHEDULE)
        self._delete = conn.register(lua.DELETE_SCHEDULE)
        self._claim = conn.register(lua.CLAIM_DUE)
        self._record = conn.register(lua.RECORD_PROGRESS)

    async def create_schedule(self, schedule_id: str, owner: str, data: bytes, created_ms: int, due_ms: int) -> bool:
        created = await self.conn.write(
            self._create,
            [self.prefix + schedule_id, self.due, self.ids, self.owners + owner],
            [schedule_id, owner, data, created_ms, due_ms],
        )
        return bool(created)

    async def get_schedule(self, schedule_id: str) -> ScheduleRecord | None:
        fields = await self.conn.do(self.conn.r.hgetall(self.prefix + schedule_id))
        return _record(schedule_id, fields) if fields else None

    async def list_schedules(self, owner: str | None, after: str, limit: int) -> list[ScheduleRecord]:
        index = self.ids if owner is None else self.owners + owner
        start = f"({after}" if after else "-"
        ids = [i.decode() for i in await self.conn.do(self.conn.r.zrangebylex(index, start, "+", 0, limit))]
        if not ids:
            return []
        async with self.conn.pipeline(transaction=False) as pipe:
            for schedule_id in ids:
                pipe.hgetall(self.prefix + schedule_id)
            found = await self.conn.do(pipe.execute())
        return [_record(i, fields) for i, fields in zip(ids, found) if fields]

    async def update_schedule(self, schedule_id: str, data: bytes, due_ms: int, last_fire_ms: int | None) -> bool:
        updated = await self.conn.write(
            self._update,
            [self.prefix + schedule_id, self.due],
            [schedule_id, data, due_ms, "" if last_fire_ms is None else last_fire_ms],
        )
        return bool(updated)

    async def delete_schedule(self, schedule_id: str) -> bool:
        deleted = await self.conn.write(
            self._delete, [self.prefix + schedule_id, self.due, self.ids], [schedule_id, self.owners]
        )
        return bool(deleted)

    async def claim_due(self, now_ms: int, lease_ms: int, limit: int) -> list[ScheduleRecord]:
        reply = await self.conn.write(self._claim, [self.due], [now_ms, lease_ms, limit, self.prefix])
        records = []
        for i in range(0, len(reply), 2):
            flat = reply[i + 1]
            if flat:
                records.append(_record(reply[i].decode(), dict(zip(flat[::2], flat[1::2]))))
        return records

    async def record_progress(self, schedule_id: str, progress: ScheduleProgress) -> None:
        def kept(value: int | None) -> Any:
            return "" if value is None else value

        await self.conn.write(
            self._record,
            [self.prefix + schedule_id, self.due],
            [
                schedule_id,
                json.dumps([[f, t] for f, t in progress.started]),
                json.dumps(list(progress.skipped)),
                progress.missed,
                kept(progress.last_fire_ms),
                kept(progress.buffered_ms),
                kept(progress.due_ms),
                progress.version,
                RECENT_RUNS,
                json.dumps([[f, why] for f, why in progress.refused]),
            ],
        )

    async def schedule_count(self) -> int:
        return int(await self.conn.do(self.conn.r.zcard(self.ids)))


def _record(schedule_id: str, fields: dict[bytes, bytes]) -> ScheduleRecord:
    def number(name: bytes) -> int:
        return int(fields.get(name, b"0"))

    return ScheduleRecord(
        schedule_id=schedule_id,
        owner=fields[b"o"].decode(),
        data=fields[b"d"],
        version=number(b"v"),
        created_ms=number(b"c"),
        runs=number(b"r"),
        skipped=number(b"k"),
        missed=number(b"m"),
        last_fire_ms=number(b"l"),
        buffered_ms=number(b"b"),
        recent=[(int(f), str(t)) for f, t in json.loads(fields.get(b"rr", b"[]"))],
        refused=number(b"f"),
        refusals=[(int(f), str(why)) for f, why in json.loads(fields.get(b"rf", b"[]"))],
        latest_run=stored_run(fields.get(b"lt", b'[0, ""]')),
    )
