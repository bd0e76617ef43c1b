"""The label index on Redis for the tasks stored before it existed.

A task's labels are indexed as it is stored (queue_lua.CREATE_TASK: a zset per label and
partition, and the digests in the header's `lb`). A store written by an earlier version holds
tasks with labels and no index entries; a replica of this version indexes them as it opens the
store (again at its purges, if that failed), once per store, in the background (a pass over every
partition's tasks, 200 at a time), and marks the store done in the layout's meta hash. Each task
is indexed by a script that first checks it is still there and not indexed yet, so a task deleted
or purged meanwhile leaves nothing behind, and replicas that run the pass together write the same
entries once.
"""

from __future__ import annotations

import logging
from typing import Any

from mcp_sdk.proto import task_pb2
from mcp_server.errors import Unavailable
from mcp_server.state.redis.connection import RedisConnection
from mcp_server.state.redis.store_pass import StorePass

log = logging.getLogger(__name__)
LABELS_FIELD = "labels_indexed"  # in the layout's meta hash: every task stored before has its label index
PAGE = 200

# KEYS: the task's header, then the indexes of its labels; ARGV: its id, its create micros
# -> 1 when indexed now, 0 when it is gone or indexed already
INDEX_LABELS = """
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HEXISTS', KEYS[1], 'lb') == 1 then return 0 end
local digests = {}
for i = 2, #KEYS do
  redis.call('ZADD', KEYS[i], ARGV[2], ARGV[1])
  digests[#digests + 1] = string.match(KEYS[i], 'l:(%x+)$')
end
redis.call('HSET', KEYS[1], 'lb', table.concat(digests, ' '))
return 1
"""


class LabelIndexer(StorePass):
    """Indexes the labels of tasks stored before the label index, once per store (see the module)."""

    name = "label-index"

    def __init__(self, conn: RedisConnection) -> None:
        super().__init__(conn)
        self._index = conn.register(INDEX_LABELS)

    async def run(self) -> bool:
        meta = self.conn.layout.meta
        try:
            if await self.conn.do(self.conn.r.hget(meta, LABELS_FIELD)) is None:
                indexed = await self._index_all()
                if indexed:
                    log.info("the labels of %d tasks stored before the label index are indexed", indexed)
                await self.conn.do(self.conn.r.hset(meta, LABELS_FIELD, 1))
        except Unavailable as exc:  # unreachable, or full: the next purge starts it again
            log.debug("indexing the labels of earlier tasks: %s", exc)
            return False
        except Exception:  # a bug must not stop purges: they start it again
            log.exception("indexing the labels of earlier tasks failed unexpectedly")
            return False
        return True

    async def _index_all(self) -> int:
        count = 0
        for partition in range(self.conn.layout.partitions):
            everything, cursor = self.conn.layout.index(partition), 0
            while True:
                cursor, entries = await self.conn.do(self.conn.r.zscan(everything, cursor, count=PAGE))
                if entries:
                    count += await self._index_page(partition, entries)
                if not cursor:
                    break
        return count

    async def _index_page(self, partition: int, entries: list[tuple[bytes, float]]) -> int:
        layout = self.conn.layout
        ids = [raw.decode() for raw, _ in entries]
        async with self.conn.pipeline(transaction=False) as pipe:
            for task_id in ids:
                pipe.hmget(layout.task(task_id).header, "f", "lb")
            headers = await self.conn.do(pipe.execute())
        calls: list[tuple[Any, list[str], list[Any]]] = []
        for task_id, (_, micros), (fixed, indexed) in zip(ids, entries, headers, strict=True):
            if fixed is None or indexed is not None:
                continue  # gone since the scan, or indexed as it was stored
            labels = task_pb2.Task.FromString(fixed).labels
            if labels:
                keys = [layout.label_index(partition, key, value) for key, value in sorted(labels.items())]
                calls.append((self._index, [layout.task(task_id).header, *keys], [task_id, int(micros)]))
        return sum(int(done) for done in await self.conn.scripts(calls)) if calls else 0
