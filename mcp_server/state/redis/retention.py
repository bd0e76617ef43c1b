"""Retention on Redis when MCP_RETENTION_SECONDS changes.

Finished tasks are listed by when they ended (layout.ends), so every purge applies the retention
it is given to every finished task: a lower one purges tasks that ended under a longer one. Their
keys also carry a TTL (the retention and BACKSTOP_MS) in case no replica purges at all, set when
each ends; a replica whose retention is longer than the one the store was last kept with
lengthens those TTLs once, first, so that no data goes by a TTL set under the shorter one.
"""

from __future__ import annotations

import logging

from mcp_server.errors import Unavailable
from mcp_server.state.redis.connection import BACKSTOP_MS, RedisConnection
from mcp_server.state.redis.status_lua import MOVE_STATUS
from mcp_server.state.redis.store_pass import StorePass

log = logging.getLogger(__name__)
RETENTION_FIELD = "retention_ms"  # in the layout's meta hash: the retention the store is kept with

# KEYS: ends; ARGV: ZSCAN cursor, task key prefix, retention + backstop (ms) -> the next cursor.
# Each finished task's keys expire that long after it ended (ZSCAN returns every task that stays
# in the set for the whole scan at least once; going over one twice sets the same TTL again).
LENGTHEN_TTLS = (
    MOVE_STATUS
    + """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local page = redis.call('ZSCAN', KEYS[1], ARGV[1], 'COUNT', 200)
local entries = page[2]
for i = 1, #entries, 2 do
  local left = tonumber(entries[i + 1]) + tonumber(ARGV[3]) - now_ms
  if left > 0 then expire_task(ARGV[2] .. entries[i], left) end
end
return page[1]
"""
)


class RetentionKeeper(StorePass):
    """Records this replica's retention with the store, lengthening finished tasks' TTLs first
    when it is the longer one: once per replica, in the background, started by its first purge
    (a pass over many tasks must not hold the purge's caller, the lease upkeep)."""

    name = "retention"

    def __init__(self, conn: RedisConnection) -> None:
        super().__init__(conn)
        self._lengthen = conn.register(LENGTHEN_TTLS)

    @property
    def agreeing(self) -> bool:
        """Whether the pass is under way."""
        return self.under_way

    def agree(self) -> None:
        """Start the pass unless it is done or under way (one that failed starts again)."""
        self.start()

    async def run(self) -> bool:
        meta, ours = self.conn.layout.meta, self.conn.retention_ms
        try:
            stored = await self.conn.do(self.conn.r.hget(meta, RETENTION_FIELD))
            # None: a new store, or one whose finished tasks all ended under this layout's replicas,
            # the first of which records its retention (so there is nothing to lengthen)
            if stored is not None and int(stored) < ours:
                lengthened = await self._lengthen_ttls(ours + BACKSTOP_MS)
                if lengthened:
                    log.info(
                        "retention is %.0f s, the store was kept with %.0f s: the TTLs of %d finished tasks lengthened",
                        ours / 1000,
                        int(stored) / 1000,
                        lengthened,
                    )
            if stored is None or int(stored) != ours:
                await self.conn.do(self.conn.r.hset(meta, RETENTION_FIELD, ours))
        except Unavailable as exc:  # unreachable, or full (it refuses the record): the next purge tries again
            log.debug("recording the retention: %s", exc)
            return False
        except Exception:  # a bug must not stop purges: they try again
            log.exception("recording the retention failed unexpectedly")
            return False
        return True

    async def _lengthen_ttls(self, ttl_ms: int) -> int:
        """Every finished task's keys expire `ttl_ms` after it ended; how many tasks were set."""
        layout, count = self.conn.layout, 0
        for partition in range(layout.partitions):
            ends, prefix, cursor = layout.ends(partition), layout.task_prefix(partition), "0"
            count += int(await self.conn.do(self.conn.r.zcard(ends)))
            while True:
                reply = await self.conn.do(self.conn.script(self._lengthen, [ends], [cursor, prefix, ttl_ms]))
                cursor = reply.decode() if isinstance(reply, bytes) else str(reply)
                if cursor == "0":
                    break
        return count
