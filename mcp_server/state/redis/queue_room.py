"""Whether the queue on Redis has room for one more task: in all (`max_queue`) and for its owner
(its OwnerShare of tasks and bytes), from counts read at most every QUEUE_LENGTH_CACHE_SECONDS."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

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


@dataclass
class _Owner:
    """What this replica knows of one owner's queued tasks: the last count read (with what was
    queued here once that read was sent) and the submissions it let through that are not stored yet."""

    read_at: float = 0.0
    tasks: int = 0
    bytes: int = 0
    pending_tasks: int = 0
    pending_bytes: int = 0
    reading: asyncio.Future[None] | None = None
    drained: asyncio.Event | None = None  # set when nothing is pending, for a read that waits for that


class QueueRoom:
    """Counts of queued tasks (the whole queue's, an owner's tasks and bytes) at most
    QUEUE_LENGTH_CACHE_SECONDS old (one round trip per tenth of a second, not per submission), plus
    what this replica queued since. An owner's tasks are counted only when its share could be
    reached (see owner_to_count), so most submissions to a short queue read nothing. Through one
    replica neither the queue's length nor an owner's share is passed: a submission let through
    counts (pending) until it is stored, and an owner's count is read once its submissions under
    way here are stored (new ones wait for the read); other replicas' submissions count once this
    one reads them (so through several, a limit can be passed by what the others queue within that
    tenth of a second)."""

    def __init__(self, conn: RedisConnection, queue_length: Callable[[], Awaitable[int]]) -> None:
        self.conn = conn
        self._queue_length = queue_length
        self._owner_queued = conn.register(OWNER_QUEUED)
        self._length: tuple[float, int, int] = (0.0, 0, 0)  # when read, what it read, _queued_here then
        self._queued_here = 0  # tasks this replica queued, ever
        self._owners: dict[str, _Owner] = {}
        self._pending = 0  # submissions let through and not stored yet, of every owner

    async def check(self, owner: str, max_queue: int, share: OwnerShare, size: int) -> bool:
        """Raise QueueFull or OwnerQueueFull if a task of `owner` that stores `size` bytes may not
        be queued now (0: no limit). True when it counts as pending from now on: then `stored`
        must follow, whatever becomes of the submission."""
        if not (max_queue or share.tasks or share.bytes):
            return False
        counted = self._owners.get(owner) or self._new_owner(owner)
        while True:
            length = await self._length_now() + self._pending
            if counted.reading is None:
                break
            await asyncio.shield(counted.reading)  # an owner's read counts what is stored before it, no more
        if max_queue and length >= max_queue:
            raise QueueFull(max_queue)
        if owner_to_count(share, length, size):
            await self._read_owner(owner, counted)
            queued, held = counted.tasks + counted.pending_tasks, counted.bytes + counted.pending_bytes
            check_owner_share(owner, share, queued, held, size)
        counted.pending_tasks += 1
        counted.pending_bytes += size
        self._pending += 1
        return True

    def stored(self, owner: str, size: int, pending: bool, queued: bool) -> None:
        """A submission of `owner` that stores `size` bytes was answered: `pending`, what `check`
        said of it; `queued`, whether it made a task that waits in the queue."""
        counted = self._owners.get(owner)
        if pending:
            self._pending -= 1
            if counted is not None:
                counted.pending_tasks -= 1
                counted.pending_bytes -= size
                if not counted.pending_tasks and counted.drained is not None:
                    counted.drained.set()
        if queued:
            self._queued_here += 1
            if counted is not None:
                counted.tasks += 1
                counted.bytes += size

    async def _length_now(self) -> int:
        """The queue's length as last read, plus what was queued here since the read began (what
        the read saw of that counts twice: it errs high)."""
        taken, length, queued_before = self._length
        if time.monotonic() - taken > QUEUE_LENGTH_CACHE_SECONDS:
            queued_before = self._queued_here
            length = await self._queue_length()
            self._length = (time.monotonic(), length, queued_before)
        return length + self._queued_here - queued_before

    def _new_owner(self, owner: str) -> _Owner:
        if len(self._owners) >= MAX_OWNERS_COUNTED:  # forget those with nothing under way
            self._owners = {o: c for o, c in self._owners.items() if c.pending_tasks or c.reading}
        counted = self._owners[owner] = _Owner()
        return counted

    async def _read_owner(self, owner: str, counted: _Owner) -> None:
        """Read the owner's queued tasks and bytes unless the last read is fresh: one read at a
        time, while none of the owner's submissions through here is under way (the others wait),
        so that each of them is in the read or counted after it, never both nor neither."""
        while time.monotonic() - counted.read_at > QUEUE_LENGTH_CACHE_SECONDS:
            if counted.reading is not None:
                await asyncio.shield(counted.reading)
                continue
            counted.reading = asyncio.get_running_loop().create_future()
            try:
                while counted.pending_tasks > 0:
                    counted.drained = asyncio.Event()
                    await counted.drained.wait()
                counted.drained = None
                counted.tasks = counted.bytes = 0
                layout = self.conn.layout
                counts = await self.conn.scripts(
                    [(self._owner_queued, [layout.queue(p)], [owner]) for p in range(layout.partitions)]
                )
                counted.tasks += sum(int(c[0]) for c in counts)
                counted.bytes += sum(int(c[1]) for c in counts)
                counted.read_at = time.monotonic()
            finally:
                counted.reading.set_result(None)
                counted.reading = None
