"""Following task event streams on Redis for this replica's watchers (see StreamHub)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Sequence
from typing import Any

from mcp_sdk.proto import task_pb2
from mcp_server.engine.cancelling import cancel_and_wait
from mcp_server.errors import McpError, Unavailable
from mcp_server.state.followers import Followers
from mcp_server.state.redis.connection import RedisConnection


class _PartitionReader:
    """One blocking XREAD over every followed stream of one partition (one slot, so the read
    is legal on a cluster), plus this replica's private wake-up stream in that partition."""

    def __init__(self, hub: StreamHub, partition: int) -> None:
        self.hub = hub
        self.keys: set[str] = set()
        self.wake_key = f"{hub.store.layout.wake(partition)}:{hub.replica}"
        self.wake_id = "0-0"
        self.task: asyncio.Task[None] | None = None

    async def include(self, key: str) -> None:
        """Follow `key` from now on. A blocked XREAD cannot be cancelled safely (its reply can
        still arrive and be taken for the answer to the next command), so a new stream joins by
        writing to the wake-up stream, which ends the blocked read. A stream this replica writes
        itself needs no read: it joins the XREAD only once its local writes stop."""
        if self.add(key) and self.hub.needs_read(key):
            await self.wake()

    def add(self, key: str) -> bool:
        """Count `key` among the streams followed; False when that started the reader (its first
        XREAD reads the key), True when a blocked XREAD may have to be woken for it."""
        self.keys.add(key)
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._read())
            return False
        return True

    async def wake(self) -> None:
        """End the blocked XREAD, so that the next one reads the streams followed now."""
        store = self.hub.store
        async with store.pipeline() as pipe:
            pipe.xadd(self.wake_key, {"w": b"1"}, maxlen=16, approximate=True)
            pipe.expire(self.wake_key, 3600)
            await store.do(pipe.execute())

    async def _read(self) -> None:
        store, logs = self.hub.store, self.hub.followers.logs
        while True:
            self.hub.followers.prune()
            self.keys &= logs.keys()  # pruned ones
            if not self.keys:
                return
            wanted: dict[Any, Any] = {k: f"0-{logs[k].last_sequence}" for k in self.keys if self.hub.needs_read(k)}
            if not wanted:  # every stream followed here is written here: nothing to read
                await asyncio.sleep(StreamHub.LOCAL_RECHECK_SECONDS)
                continue
            wanted[self.wake_key] = self.wake_id
            try:
                reply = await store.do(store.r.xread(wanted, count=StreamHub.READ_COUNT, block=StreamHub.BLOCK_MS))
            except Unavailable as exc:
                for key in self.keys:
                    logs[key].failed(exc)
                await asyncio.sleep(0.2)
                continue
            for raw_key, entries in reply or []:
                key = raw_key.decode()
                if key == self.wake_key:
                    self.wake_id = entries[-1][0].decode()
                elif entries:
                    self.hub.followers.add(key, [task_pb2.TaskEvent.FromString(fields[b"e"]) for _, fields in entries])


class StreamHub:
    """Follows the event streams this replica's watchers want, with one blocking XREAD per
    partition however many watchers and tasks there are; a stream this replica writes is fed
    by its own writes instead, while it writes it."""

    BLOCK_MS = 1000
    # entries per stream per XREAD: events may be 1 MB each, and a watcher that starts behind
    # has the XREAD read the log's history too (1,000 of them were up to 1 GB in one reply)
    READ_COUNT = 32
    # a stream this replica wrote within this time is fed by its own writes, not by XREAD
    LOCAL_SECONDS = 5.0
    LOCAL_RECHECK_SECONDS = 0.25

    def __init__(self, store: RedisConnection) -> None:
        self.store = store
        self.replica = uuid.uuid4().hex
        self.followers = Followers()
        self.readers: dict[int, _PartitionReader] = {}
        self.local: dict[str, float] = {}  # stream key -> until when this replica is its writer
        self._local_pruned = 0.0
        self._waking: set[asyncio.Task[None]] = set()

    def covers(self, key: str, after_sequence: int) -> bool:
        return self.followers.covers(key, after_sequence)

    async def follow(self, key: str, partition: int, after_sequence: int, reading: bool = False) -> None:
        """Start following `key` from `after_sequence`: from now on, whatever is written there
        reaches the hub. `reading`: the caller now reads the stream once and passes that to
        `feed` (it must, even on failure), so a gap before events written here meanwhile is left
        to that read, not to the XREAD: a watcher that comes right after its task is submitted
        here costs no wake-up and no XREAD of the stream."""
        self.followers.prune()
        log, new = self.followers.follow(key, after_sequence)
        if new:
            log.reading = reading
            await self._reader(partition).include(key)

    def follow_new(self, key: str, partition: int) -> None:
        """Follow the stream of a task this replica has just created and holds, from its start:
        its writes here (see written) feed it, so its first watchers read nothing. Called before
        the first event is passed to written, with nothing written by anyone since the create
        (a log held of the key is an earlier task's of the same id, deleted since: replaced)."""
        self.followers.prune()
        self.followers.follow(key, 0, fresh=True)
        self._reader(partition).add(key)  # the stream is this replica's: no XREAD to wake

    def forget(self, key: str, error: McpError) -> None:
        """The stream's task is gone: its watchers here get `error`, and nothing of it is kept."""
        self.followers.forget(key, error)
        self.local.pop(key, None)

    def _reader(self, partition: int) -> _PartitionReader:
        reader = self.readers.get(partition)
        if reader is None:
            reader = self.readers[partition] = _PartitionReader(self, partition)
        return reader

    def feed(self, key: str, events: Sequence[task_pb2.TaskEvent]) -> None:
        """Events read from the stream itself (see follow); [] when that read failed."""
        log = self.followers.logs.get(key)
        if log is not None:
            log.reading = False
        self.followers.add(key, events)
        if self.is_local(key) and self.followers.has_gap(key):
            self._wake_readers_of(key)  # the read did not fill the gap: another replica wrote meanwhile

    async def wait(
        self, key: str, partition: int, after_sequence: int, timeout: float
    ) -> list[task_pb2.TaskEvent] | None:
        """New events of `key` after `after_sequence`; [] on timeout; None when the hub began
        following after that point (the caller reads the stream itself)."""
        await self.follow(key, partition, after_sequence)
        return await self.followers.wait(key, after_sequence, timeout)

    def written(self, key: str, events: Sequence[task_pb2.TaskEvent], writer: bool = True) -> None:
        """Events this replica just wrote reach its own watchers at once, without waiting for
        the XREAD to see them (only after the write succeeded, so nothing unwritten is shown).
        `writer`: this replica runs the task, so it writes what follows too (False: it does not,
        or no longer does)."""
        now = time.monotonic()
        if writer:
            self.local[key] = now + self.LOCAL_SECONDS
        elif self.local.pop(key, None) is not None:
            self._wake_readers_of(key)  # another replica may write it now: the XREAD follows it
        self.followers.add(key, events)
        if writer and self.followers.has_gap(key):
            # this replica runs the task again, but what another replica wrote meanwhile has not
            # reached it yet: the XREAD fetches that, local or not (see needs_read)
            self._wake_readers_of(key)
        if now - self._local_pruned > self.LOCAL_SECONDS:
            self.local = {k: until for k, until in self.local.items() if until > now}
            self._local_pruned = now

    def _wake_readers_of(self, key: str) -> None:
        """Have the reader that follows `key` read it at once (a blocked XREAD is ended): this
        replica no longer writes it, or it misses what another replica wrote."""
        for reader in self.readers.values():
            if key in reader.keys and reader.task is not None and not reader.task.done():
                waking = asyncio.get_running_loop().create_task(self._wake(reader))
                self._waking.add(waking)
                waking.add_done_callback(self._waking.discard)

    async def _wake(self, reader: _PartitionReader) -> None:
        with contextlib.suppress(Unavailable):  # the reader's next round follows the stream anyway
            await reader.wake()

    def needs_read(self, key: str) -> bool:
        """Whether the XREAD must read `key`: another replica may write it, or it misses events
        another replica wrote before this one took the task back."""
        return not self.is_local(key) or self.followers.has_gap(key)

    def is_local(self, key: str) -> bool:
        """Whether this replica wrote `key` lately (so its own writes feed its watchers)."""
        return self.local.get(key, 0.0) > time.monotonic()

    async def close(self) -> None:
        for reader in self.readers.values():
            if reader.task is not None:
                await cancel_and_wait(reader.task)
