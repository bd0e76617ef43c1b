"""Following task event streams on Redis for this replica's watchers (see StreamHub)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from mcp_server.errors import Unavailable
from mcp_server.proto import task_pb2

if TYPE_CHECKING:
    from mcp_server.state.redis import RedisStore


class _Stream:
    """What one replica knows of one followed event stream."""

    def __init__(self, after_sequence: int) -> None:
        self.start = after_sequence
        self.last_id = f"0-{after_sequence}"
        self.events: list[task_pb2.TaskEvent] = []
        self.waiters: set[asyncio.Future[None]] = set()
        self.watchers = 0
        self.idle_since = 0.0
        self.error: Unavailable | None = None
        self.ahead: dict[int, task_pb2.TaskEvent] = {}  # arrived before the events they follow

    def wake(self) -> None:
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_result(None)

    def newer_than(self, after_sequence: int) -> bool:
        return bool(self.events) and self.events[-1].sequence > after_sequence

    @property
    def last_sequence(self) -> int:
        return self.events[-1].sequence if self.events else self.start

    def add(self, events: Sequence[task_pb2.TaskEvent]) -> None:
        """Append the events that continue this stream; ignore ones already here, and hold ones
        that arrive ahead of a gap (a local write can overtake the read that fills it)."""
        last = self.last_sequence
        for event in events:
            if event.sequence > last:
                self.ahead[event.sequence] = event
        grown = False
        while (following := self.ahead.pop(self.last_sequence + 1, None)) is not None:
            self.events.append(following)
            grown = True
        if grown:
            self.last_id = f"0-{self.last_sequence}"
            self.error = None
            self.wake()


class _PartitionReader:
    """One blocking XREAD over every followed stream of one partition (one slot, so the read
    is legal on a cluster), plus this replica's private wake-up stream in that partition."""

    def __init__(self, hub: StreamHub, partition: int) -> None:
        self.hub = hub
        self.streams: dict[str, _Stream] = {}
        self.wake_key = f"{hub.store.layout.wake(partition)}:{hub.replica}"
        self.wake_id = "0-0"
        self.task: asyncio.Task[None] | None = None

    async def include(self, key: str, stream: _Stream) -> None:
        """Follow `key` from now on. A blocked XREAD cannot be cancelled safely (its reply can
        still arrive and be taken for the answer to the next command), so a new stream joins by
        writing to the wake-up stream, which ends the blocked read. A stream this replica writes
        itself needs no read: it joins the XREAD only once its local writes stop."""
        self.streams[key] = stream
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._read())
            return
        if self.hub.is_local(key):
            return
        store = self.hub.store
        async with store.r.pipeline(transaction=False) as pipe:
            pipe.xadd(self.wake_key, {"w": b"1"}, maxlen=16, approximate=True)
            pipe.expire(self.wake_key, 3600)
            await store._do(pipe.execute())

    def prune(self) -> None:
        cutoff = time.monotonic() - StreamHub.IDLE_SECONDS
        for key in [k for k, s in self.streams.items() if s.watchers == 0 and 0 < s.idle_since < cutoff]:
            del self.streams[key]
            self.hub.streams.pop(key, None)

    async def _read(self) -> None:
        store = self.hub.store
        while self.streams:
            self.prune()
            if not self.streams:
                return
            wanted: dict[Any, Any] = {key: s.last_id for key, s in self.streams.items() if not self.hub.is_local(key)}
            if not wanted:  # every stream followed here is written here: nothing to read
                await asyncio.sleep(StreamHub.LOCAL_RECHECK_SECONDS)
                continue
            wanted[self.wake_key] = self.wake_id
            try:
                reply = await store._do(store.r.xread(wanted, count=1000, block=StreamHub.BLOCK_MS))
            except Unavailable as exc:
                for stream in self.streams.values():
                    stream.error = exc
                await asyncio.sleep(0.2)
                continue
            for raw_key, entries in reply or []:
                key = raw_key.decode()
                if key == self.wake_key:
                    self.wake_id = entries[-1][0].decode()
                    continue
                found = self.streams.get(key)
                if found is not None and entries:
                    found.add([task_pb2.TaskEvent.FromString(fields[b"e"]) for _, fields in entries])


class StreamHub:
    """Follows the event streams this replica's watchers want, with one blocking XREAD per
    partition however many watchers and tasks there are. A stream nobody waits on is kept for
    IDLE_SECONDS, so a watcher going from one wait to the next does not re-join."""

    BLOCK_MS = 1000
    IDLE_SECONDS = 5.0
    # a stream this replica wrote within this time is fed by its own writes, not by XREAD
    LOCAL_SECONDS = 5.0
    LOCAL_RECHECK_SECONDS = 0.25

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        self.replica = uuid.uuid4().hex
        self.streams: dict[str, _Stream] = {}
        self.readers: dict[int, _PartitionReader] = {}
        self.local: dict[str, float] = {}  # stream key -> until when this replica is its writer
        self._local_pruned = 0.0

    def covers(self, key: str, after_sequence: int) -> bool:
        """True when the hub already holds every event of `key` after `after_sequence`."""
        stream = self.streams.get(key)
        return stream is not None and stream.start <= after_sequence

    async def follow(self, key: str, partition: int, after_sequence: int) -> None:
        """Start following `key` from `after_sequence`: from now on, whatever is written there
        reaches the hub (by this replica's own writes, or by XREAD). The caller then reads the
        stream once, for what was written before, and passes that to `feed`."""
        if key in self.streams:
            return
        stream = self.streams[key] = _Stream(after_sequence)
        reader = self.readers.get(partition)
        if reader is None:
            reader = self.readers[partition] = _PartitionReader(self, partition)
        await reader.include(key, stream)

    def feed(self, key: str, events: Sequence[task_pb2.TaskEvent]) -> None:
        """Events read from the stream itself (see follow)."""
        stream = self.streams.get(key)
        if stream is not None and events:
            stream.add(events)

    async def wait(self, key: str, partition: int, after_sequence: int, timeout: float) -> list[task_pb2.TaskEvent] | None:
        """New events of `key` after `after_sequence`; [] on timeout; None when the hub began
        following after that point (the caller reads the stream itself)."""
        await self.follow(key, partition, after_sequence)
        stream = self.streams[key]
        stream.watchers += 1
        stream.idle_since = 0.0
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        stream.waiters.add(waiter)
        try:
            if not stream.newer_than(after_sequence):
                try:
                    await asyncio.wait_for(asyncio.shield(waiter), timeout)
                except TimeoutError:
                    if stream.error is not None:
                        raise stream.error from None
                    return []
            if after_sequence < stream.start:
                return None
            return [e for e in stream.events if e.sequence > after_sequence]
        finally:
            stream.waiters.discard(waiter)
            stream.watchers -= 1
            if stream.watchers == 0:
                stream.idle_since = time.monotonic()

    def written(self, key: str, events: Sequence[task_pb2.TaskEvent], writer: bool = True) -> None:
        """Events this replica just wrote reach its own watchers at once, without waiting for
        the XREAD to see them (only after the write succeeded, so nothing unwritten is shown).
        `writer`: this replica runs the task, so it writes what follows too."""
        now = time.monotonic()
        if writer:
            self.local[key] = now + self.LOCAL_SECONDS
        if now - self._local_pruned > self.LOCAL_SECONDS:
            self.local = {k: until for k, until in self.local.items() if until > now}
            self._local_pruned = now
        stream = self.streams.get(key)
        if stream is not None and events:
            stream.add(events)

    def is_local(self, key: str) -> bool:
        """Whether this replica wrote `key` lately (so its own writes feed its watchers)."""
        return self.local.get(key, 0.0) > time.monotonic()

    async def close(self) -> None:
        for reader in self.readers.values():
            if reader.task is not None:
                reader.task.cancel()
                with contextlib.suppress(BaseException):
                    await reader.task
