"""Whether the queue on Redis has room for one more task: in all (`max_queue`) and for its owner
(its OwnerShare of tasks and bytes), from counts read at most every QUEUE_LENGTH_CACHE_SECONDS."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from mcp_server.engine.ports import OwnerShare
from mcp_server.state.common import (
    MAX_OWNERS_COUNTED,
    QUEUE_LENGTH_CACHE_SECONDS,
    QueueFull,
    check_owner_share,
    owner_to_count,
)
from mcp_server.state.redis.connection import RedisConnection

# KEYS: a partition's queue; ARGV: owner -> {tasks, bytes} of it queued there (fair_lua's Q:o, Q:ob)
OWNER_QUEUED = """
local tasks = redis.call('HGET', KEYS[1] .. ':o', ARGV[1]) or '0'
local bytes = redis.call('HGET', KEYS[1] .. ':ob', ARGV[1]) or '0'
return {tonumber(tasks), tonumber(bytes)}
"""


class QueueRoom:
    """Counts of queued tasks (the whole queue's, an owner's tasks and bytes) at most
    QUEUE_LENGTH_CACHE_SECONDS old (one round trip per tenth of a second, not per submission), plus
    what this replica queued since: under a burst the queue, or an owner's share, can pass its
    limit by what other replicas queue in that time. An owner's tasks are counted only when its
    share could be reached (see owner_to_count), so most submissions to a short queue read nothing."""

    def __init__(self, conn: RedisConnection, queue_length: Callable[[], Awaitable[int]]) -> None:
        self.conn = conn
        self._queue_length = queue_length
        self._owner_queued = conn.register(OWNER_QUEUED)
        self._length: tuple[float, int] = (0.0, 0)  # when counted, and the count then plus since
        self._owners: dict[str, tuple[float, int, int]] = {}  # when counted, tasks, bytes

    async def check(self, owner: str, max_queue: int, share: OwnerShare, size: int) -> None:
        """Raise QueueFull or OwnerQueueFull if a task of `owner` that stores `size` bytes may not
        be queued now (0: no limit)."""
        if not (max_queue or share.tasks or share.bytes):
            return
        length = await self._length_now()
        if max_queue and length >= max_queue:
            raise QueueFull(max_queue)
        if owner_to_count(share, length, size):
            count, held = await self._owner_now(owner)
            check_owner_share(owner, share, count, held, size)

    def queued(self, owner: str, size: int) -> None:
        """A task of `owner` that stores `size` bytes was queued here: it counts before the next count."""
        taken, length = self._length
        self._length = (taken, length + 1)
        if owner in self._owners:
            taken, count, held = self._owners[owner]
            self._owners[owner] = (taken, count + 1, held + size)

    async def _length_now(self) -> int:
        taken, length = self._length
        if time.monotonic() - taken > QUEUE_LENGTH_CACHE_SECONDS:
            length = await self._queue_length()
            self._length = (time.monotonic(), length)
        return length

    async def _owner_now(self, owner: str) -> tuple[int, int]:
        taken, count, held = self._owners.get(owner, (0.0, 0, 0))
        if time.monotonic() - taken > QUEUE_LENGTH_CACHE_SECONDS:
            layout = self.conn.layout
            counts = await self.conn.scripts(
                [(self._owner_queued, [layout.queue(p)], [owner]) for p in range(layout.partitions)]
            )
            count, held = sum(int(c[0]) for c in counts), sum(int(c[1]) for c in counts)
            if len(self._owners) >= MAX_OWNERS_COUNTED:
                self._owners.clear()
            self._owners[owner] = (time.monotonic(), count, held)
        return count, held
