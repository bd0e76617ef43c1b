"""Cancel requests on Redis, for a task that another replica runs: left on the task (its header's
`cx` and the partition's `cancels` zset, which that replica reads every half second) and told to
every replica at once on a pub/sub channel, so the one that runs it acts within milliseconds."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from redis.exceptions import NoPermissionError

from mcp_server.errors import Unavailable
from mcp_server.state.common import TERMINAL, now_seconds
from mcp_server.state.redis.channels import follow_channel
from mcp_server.state.redis.connection import SILENT_MASTER_GRACE, RedisConnection
from mcp_server.state.redis.layout import Layout


class CancelRequests:
    """The queue's cancel requests (RedisQueue has them)."""

    conn: RedisConnection
    layout: Layout
    _request_cancel: Any  # the registered REQUEST_CANCEL script

    async def request_cancel(self, task_id: str, reason: str) -> bool:
        keys = [self.layout.task(task_id).header, self.layout.cancels(self.layout.partition_of(task_id))]
        args = [task_id, reason, int(now_seconds() * 1000), *TERMINAL]
        if not await self.conn.do(self.conn.script(self._request_cancel, keys, args)):
            return False  # it has ended: nothing to act on
        try:  # after the request is stored: a replica told of it finds it
            await self.conn.do(self.conn.r.publish(self.layout.cancel_channel, task_id))
        except Unavailable as exc:
            if not isinstance(exc.__cause__, NoPermissionError):  # an ACL without pub/sub: the poll finds it
                raise
        return True

    async def cancel_requests(self, task_ids: Sequence[str]) -> dict[str, str]:
        """The cancel requests among `task_ids`. For as many tasks as there are partitions or
        fewer (a nudge asks of one), whether each is pending and its reason, in one round trip;
        for more, each partition's pending requests (one small read per partition, however many
        tasks run here), then the reasons of ours."""
        if not task_ids:
            return {}
        if self.conn.cluster:
            return await self._cancel_requests_by_master(task_ids)
        if len(task_ids) <= self.layout.partitions:
            async with self.conn.pipeline(transaction=False) as pipe:
                for task_id in task_ids:
                    pipe.zscore(self.layout.cancels(self.layout.partition_of(task_id)), task_id)
                    pipe.hget(self.layout.task(task_id).header, "cx")
                replies = await self.conn.do(pipe.execute())
            pairs = zip(task_ids, replies[::2], replies[1::2], strict=True)
            return {task_id: reason.decode() for task_id, pending, reason in pairs if pending is not None and reason}
        async with self.conn.pipeline(transaction=False) as pipe:
            for partition in range(self.layout.partitions):
                pipe.zrange(self.layout.cancels(partition), 0, 999)
            pending = {raw.decode() for reply in await self.conn.do(pipe.execute()) for raw in reply}
        ours = [task_id for task_id in task_ids if task_id in pending]
        if not ours:
            return {}
        async with self.conn.pipeline(transaction=False) as pipe:
            for task_id in ours:
                pipe.hget(self.layout.task(task_id).header, "cx")
            reasons = await self.conn.do(pipe.execute())
        return {task_id: reason.decode() for task_id, reason in zip(ours, reasons) if reason}

    async def _cancel_requests_by_master(self, task_ids: Sequence[str]) -> dict[str, str]:
        """On a cluster, each partition's pending requests on their own, then the reasons of ours:
        a master gone silent (a frozen host answers nothing until the socket timeout, twice) holds
        up only its own tasks' requests, a moment at most (a pipeline waited for every node)."""
        if len(task_ids) <= self.layout.partitions:
            reads = [self.conn.r.zscore(self.layout.cancels(self.layout.partition_of(t)), t) for t in task_ids]
            scores = await self.conn.each_answered(reads, grace=SILENT_MASTER_GRACE)
            ours = [task_id for task_id, score in zip(task_ids, scores) if score is not None]
        else:
            reads = [self.conn.r.zrange(self.layout.cancels(p), 0, 999) for p in range(self.layout.partitions)]
            replies = await self.conn.each_answered(reads, grace=SILENT_MASTER_GRACE)
            pending = {raw.decode() for reply in replies if reply for raw in reply}
            ours = [task_id for task_id in task_ids if task_id in pending]
        if not ours:
            return {}
        reads = [self.conn.r.hget(self.layout.task(task_id).header, "cx") for task_id in ours]
        reasons = await self.conn.each_answered(reads, grace=SILENT_MASTER_GRACE)
        return {task_id: reason.decode() for task_id, reason in zip(ours, reasons) if reason}

    def cancel_nudges(self) -> AsyncIterator[str]:
        """Task ids from the cancel channel, as `request_cancel` publishes them; what is lost to a
        dropped connection the replicas' poll of `cancel_requests` finds."""
        return follow_channel(self.conn, self.layout.cancel_channel, "cancels through other replicas wait for the poll")
