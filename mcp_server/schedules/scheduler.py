"""The scheduler every replica runs: it claims the schedules due (each under a lease, so one
replica fires a schedule at a time and a dead replica's schedules pass to another) and fires them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime

from mcp_server.engine.ports import ScheduleRecord, ScheduleStore
from mcp_server.errors import McpError
from mcp_server.schedules.firing import Firing

log = logging.getLogger(__name__)

TICK_SECONDS = 0.2
BATCH = 200


class Scheduler:
    def __init__(self, schedules: ScheduleStore, firing: Firing, lease_seconds: float) -> None:
        self.schedules = schedules
        self.firing = firing
        self.lease_ms = int(lease_seconds * 1000)

    async def run_forever(self) -> None:
        while True:
            fired = 0
            with contextlib.suppress(McpError):  # the store is away: try again next tick
                fired = await self.fire_due()
            if fired < BATCH:
                await asyncio.sleep(TICK_SECONDS)

    async def fire_due(self) -> int:
        """Claim and fire the schedules due now; how many."""
        now = time.time()
        records = await self.schedules.claim_due(int(now * 1000), self.lease_ms, BATCH)
        if records:
            moment = datetime.fromtimestamp(now, tz=UTC)
            await asyncio.gather(*(self._fire(record, moment) for record in records))
        return len(records)

    async def _fire(self, record: ScheduleRecord, now: datetime) -> None:
        try:
            await self.firing.fire_due(record, now)
        except Exception:  # fired again when its lease ends
            log.exception(
                "schedule %s: firing failed; it is tried again within %d ms", record.schedule_id, self.lease_ms
            )
