"""The production store: Redis through redis.asyncio; several replicas share one Redis.

Every write that must be atomic is one Lua script (one round trip): a step's snapshot plus
its events (checked against the lease's fencing token), a claim from the queue, a lease
renewal, the takeover of expired leases. Event logs are Redis Streams whose entry IDs are
`0-<sequence>`, so `XREAD BLOCK` follows a task live from any replica.

Keys (prefix `mcp:` unless the URL sets `?prefix=`): `wf:<id>` hash version -> Workflow, `wfids` sorted set, `task:<id>`
hash (data, status, token, member, priority), `ev:<id>` stream, `queue` sorted set
(score -priority, member `<counter>:<task_id>` so equal priorities pop FIFO), `leases`
sorted set (expiry ms), `tasks` sorted set (creation counter), `req:<request_id>`,
`protocols` hash.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from mcp_server.engine.context import now
from mcp_server.errors import LeaseLost, Unavailable
from mcp_server.proto import registry_pb2, task_pb2, workflow_pb2
from mcp_server.state.common import (
    ACTIVE,
    TERMINAL,
    QueueFull,
    RequestIdReused,
    decode_position,
    decode_token,
    encode_token,
    mark_cancelled,
    now_seconds,
    request_key,
)
from mcp_server.state.redis_streams import StreamHub

LATEST_WORKFLOW = """
local version = redis.call('HGET', KEYS[2], ARGV[1])
if not version then return nil end
return redis.call('HGET', KEYS[1], version)
"""

CREATE_TASK = """
if redis.call('EXISTS', KEYS[2]) == 1 then return {3, ARGV[1]} end
if KEYS[1] ~= KEYS[2] then
  local existing = redis.call('GET', KEYS[1])
  if existing then return {0, existing, redis.call('HGET', ARGV[10] .. existing, 'fp') or ''} end
end
if tonumber(ARGV[7]) > 0 and redis.call('ZCARD', KEYS[4]) >= tonumber(ARGV[7]) then return {2, ''} end
local counter = redis.call('INCR', KEYS[6])
local member = string.format('%020d:%s', counter, ARGV[1])
redis.call('HSET', KEYS[2], 'data', ARGV[2], 'status', ARGV[3], 'token', 0, 'member', member,
           'priority', ARGV[4], 'workflow', ARGV[6], 'counter', counter, 'req', KEYS[1], 'owner', ARGV[8], 'fp', ARGV[9], 'seq', 1)
redis.call('XADD', KEYS[3], '0-1', 'e', ARGV[5])
redis.call('ZADD', KEYS[4], -tonumber(ARGV[4]), member)
redis.call('ZADD', KEYS[5], counter, ARGV[1])
if KEYS[1] ~= KEYS[2] then redis.call('SET', KEYS[1], ARGV[1]) end
return {1, ARGV[1]}
"""

SAVE_TASK = """
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return redis.error_reply('LEASE_LOST') end
-- events already in the log were written by an earlier try of this same call: skip them
local last = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
redis.call('HSET', KEYS[1], 'data', ARGV[2], 'status', ARGV[3])
for i = 7, #ARGV, 2 do
  local seq = tonumber(ARGV[i])
  if seq > last then
    redis.call('XADD', KEYS[2], '0-' .. ARGV[i], 'e', ARGV[i + 1])
    last = seq
  end
end
redis.call('HSET', KEYS[1], 'seq', last)
if ARGV[4] == '1' then
  redis.call('ZREM', KEYS[3], ARGV[5])
  redis.call('PEXPIRE', KEYS[1], ARGV[6])
  redis.call('PEXPIRE', KEYS[2], ARGV[6])
  local req = redis.call('HGET', KEYS[1], 'req')
  if req and req ~= KEYS[1] then redis.call('PEXPIRE', req, ARGV[6]) end
end
return 1
"""

CLAIM_TASK = """
while true do
  local popped = redis.call('ZPOPMIN', KEYS[1])
  if #popped == 0 then return nil end
  local task_id = string.sub(popped[1], 22)
  local key = ARGV[3] .. task_id
  if redis.call('EXISTS', key) == 1 then
    local token = redis.call('HINCRBY', key, 'token', 1)
    redis.call('HSET', key, 'holder', ARGV[2])
    redis.call('ZADD', KEYS[2], ARGV[1], task_id)
    return {redis.call('HGET', key, 'data'), token}
  end
end
"""

RENEW_LEASES = """
local lost = {}
for i = 3, #ARGV, 2 do
  local task_id, token = ARGV[i], ARGV[i + 1]
  if redis.call('HGET', ARGV[2] .. task_id, 'token') == token and redis.call('ZSCORE', KEYS[1], task_id) then
    redis.call('ZADD', KEYS[1], ARGV[1], task_id)
  else
    table.insert(lost, task_id)
  end
end
return lost
"""

RELEASE_EXPIRED = """
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 1000)
local n = 0
for _, task_id in ipairs(expired) do
  redis.call('ZREM', KEYS[1], task_id)
  local key = ARGV[2] .. task_id
  local status = redis.call('HGET', key, 'status')
  if status == ARGV[3] or status == ARGV[4] then
    local fields = redis.call('HMGET', key, 'member', 'priority')
    redis.call('ZADD', KEYS[2], -tonumber(fields[2]), fields[1])
    n = n + 1
  end
end
return n
"""


class RedisStore:
    """Store backed by Redis (see Store in engine/ports.py for the contract)."""

    def __init__(self, client: aioredis.Redis, prefix: str = "mcp:", retention_seconds: float = 7 * 24 * 3600.0) -> None:
        self.r = client
        self.p = prefix
        self.retention_ms = max(1, int(retention_seconds * 1000))
        self._hub = StreamHub(self)
        self._create = client.register_script(CREATE_TASK)
        self._save = client.register_script(SAVE_TASK)
        self._claim = client.register_script(CLAIM_TASK)
        self._renew = client.register_script(RENEW_LEASES)
        self._release = client.register_script(RELEASE_EXPIRED)
        self._latest = client.register_script(LATEST_WORKFLOW)

    @classmethod
    async def open(cls, url: str, retention_seconds: float = 7 * 24 * 3600.0) -> RedisStore:
        """Connect to `url`; a `prefix=` query parameter namespaces every key (default `mcp:`)."""
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        prefix = query.pop("prefix", ["mcp:"])[0]
        clean = urlunsplit(parts._replace(query=urlencode(query, doseq=True)))
        # A bounded pool that makes a command wait for a free connection rather than fail. A command
        # that meets a dead connection (Redis restarted) reconnects and is sent once more: every
        # script here is safe to repeat (fenced, or idempotent by key or by sequence number).
        pool = aioredis.BlockingConnectionPool.from_url(
            clean, max_connections=64, timeout=10, socket_timeout=5, socket_connect_timeout=2, health_check_interval=30,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=1),
            retry_on_error=[RedisConnectionError, RedisTimeoutError])
        client = aioredis.Redis(connection_pool=pool)
        store = cls(client, prefix, retention_seconds)
        await store.ping()
        return store

    async def _do(self, coro: Any) -> Any:
        try:
            return await coro
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise Unavailable(f"redis store unreachable: {exc}") from exc
        except ResponseError as exc:
            if "LEASE_LOST" in str(exc):
                raise LeaseLost("lease is no longer held") from exc
            raise Unavailable(f"redis store error: {exc}") from exc
        except RedisError as exc:
            raise Unavailable(f"redis store error: {exc}") from exc

    # ---- workflows ------------------------------------------------------------------------
    async def create_workflow(self, workflow: workflow_pb2.Workflow) -> workflow_pb2.Workflow:
        stored = workflow_pb2.Workflow()
        stored.CopyFrom(workflow)
        stored.version = int(await self._do(self.r.hincrby(self.p + "wfver", workflow.workflow_id, 1)))
        stored.create_time.CopyFrom(now())
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.hset(f"{self.p}wf:{stored.workflow_id}", str(stored.version), stored.SerializeToString())
            pipe.zadd(self.p + "wfids", {stored.workflow_id: 0})
            await self._do(pipe.execute())
        return stored

    async def get_workflow(self, workflow_id: str, version: int = 0) -> workflow_pb2.Workflow | None:
        key = f"{self.p}wf:{workflow_id}"
        if version:
            data = await self._do(self.r.hget(key, str(version)))
        else:
            data = await self._do(self._latest(keys=[key, self.p + "wfver"], args=[workflow_id]))
        return workflow_pb2.Workflow.FromString(data) if data else None

    async def list_workflows(self, page_size: int, page_token: str) -> tuple[list[workflow_pb2.Workflow], str]:
        after = decode_token(page_token)
        low = f"({after}" if after else "-"
        ids = await self._do(self.r.zrangebylex(self.p + "wfids", low, "+", start=0, num=page_size + 1))
        workflows = []
        for raw in ids[:page_size]:
            workflow = await self.get_workflow(raw.decode())
            if workflow is not None:
                workflows.append(workflow)
        token = encode_token(ids[page_size - 1].decode()) if len(ids) > page_size else ""
        return workflows, token

    async def delete_workflow(self, workflow_id: str) -> int:
        key = f"{self.p}wf:{workflow_id}"
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.hlen(key)
            pipe.delete(key)
            pipe.zrem(self.p + "wfids", workflow_id)
            count, _, _ = await self._do(pipe.execute())
        return int(count)

    # ---- tasks ----------------------------------------------------------------------------
    def _task_key(self, task_id: str) -> str:
        return f"{self.p}task:{task_id}"

    async def create_task(self, task: task_pb2.Task, event: task_pb2.TaskEvent, max_queue: int = 0,
                          fingerprint: str = "") -> tuple[task_pb2.Task, bool]:
        key = self._task_key(task.task_id)
        idempotency_key = f"{self.p}req:{request_key(task.owner, task.request_id)}" if task.request_id else key
        # Safe to repeat after a lost reply: the task key, or the request key, says it is done.
        reply = await self._do(self._create(
            keys=[idempotency_key, key, f"{self.p}ev:{task.task_id}", self.p + "queue", self.p + "tasks", self.p + "counter"],
            args=[task.task_id, task.SerializeToString(), task.status, task.priority, event.SerializeToString(), task.workflow_id,
                  max_queue, task.owner, fingerprint, self.p + "task:"]))
        created, task_id = reply[0], reply[1]
        if created == 2:
            raise QueueFull(max_queue)
        if created:
            return task, True
        if reply[2].decode() != fingerprint:
            raise RequestIdReused(task.request_id, task_id.decode())
        existing = await self.get_task(task_id.decode())
        if existing is None:
            raise Unavailable(f"request_id {task.request_id!r} names task {task_id!r}, which has expired")
        return existing, False

    async def get_task(self, task_id: str) -> task_pb2.Task | None:
        data = await self._do(self.r.hget(self._task_key(task_id), "data"))
        return task_pb2.Task.FromString(data) if data else None

    async def list_tasks(self, page_size: int, page_token: str, statuses: Sequence[int], workflow_id: str,
                         owner: str = "") -> tuple[list[task_pb2.Task], str]:
        """Newest first. The token is the creation counter of the last task returned, so pages
        stay stable while tasks arrive (they sort before it) or expire (they drop out)."""
        before = decode_position(page_token)
        high = "+inf" if before is None else f"({before}"
        wanted = {str(s).encode() for s in statuses}
        found: list[tuple[int, task_pb2.Task]] = []
        while len(found) <= page_size:
            batch = await self._do(self.r.zrevrangebyscore(self.p + "tasks", high, "-inf", start=0, num=200, withscores=True))
            if not batch:
                break
            async with self.r.pipeline(transaction=False) as pipe:
                for task_id, _ in batch:
                    pipe.hmget(self._task_key(task_id.decode()), "data", "status", "workflow", "owner")
                rows = await self._do(pipe.execute())
            for (_, score), (data, status, workflow, task_owner) in zip(batch, rows):
                high = f"({int(score)}"
                if data is None or (wanted and status not in wanted) or (workflow_id and workflow.decode() != workflow_id):
                    continue
                if owner and (task_owner or b"").decode() != owner:
                    continue
                found.append((int(score), task_pb2.Task.FromString(data)))
                if len(found) > page_size:
                    break
        page = found[:page_size]
        token = encode_token(str(page[-1][0])) if len(found) > page_size else ""
        return [task for _, task in page], token

    async def save_task(self, task: task_pb2.Task, events: Sequence[task_pb2.TaskEvent], lease_token: int) -> None:
        args: list[Any] = [lease_token, task.SerializeToString(), task.status, int(task.status in TERMINAL), task.task_id,
                           self.retention_ms]
        for event in events:
            args += [event.sequence, event.SerializeToString()]
        await self._do(self._save(keys=[self._task_key(task.task_id), f"{self.p}ev:{task.task_id}", self.p + "leases"], args=args))
        self._hub.written(f"{self.p}ev:{task.task_id}", events)

    async def cancel_pending(self, task_id: str, event: task_pb2.TaskEvent) -> task_pb2.Task | None:
        key = self._task_key(task_id)
        async with self.r.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await self._do(pipe.watch(key, self.p + "queue"))
                    data, status, member = await self._do(pipe.hmget(key, "data", "status", "member"))
                    if data is None or int(status) != task_pb2.TASK_STATUS_PENDING or await self._do(pipe.zscore(self.p + "queue", member)) is None:
                        await pipe.reset()  # type: ignore[no-untyped-call]
                        return None
                    task = task_pb2.Task.FromString(data)
                    numbered = mark_cancelled(task, event)
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.hset(key, mapping={"data": task.SerializeToString(), "status": task.status, "seq": numbered.sequence})
                    pipe.zrem(self.p + "queue", member)
                    pipe.xadd(f"{self.p}ev:{task_id}", {"e": numbered.SerializeToString()}, id=f"0-{numbered.sequence}")
                    pipe.pexpire(key, self.retention_ms)
                    pipe.pexpire(f"{self.p}ev:{task_id}", self.retention_ms)
                    await self._do(pipe.execute())
                    return task
                except aioredis.WatchError:
                    continue

    async def request_cancel(self, task_id: str, reason: str) -> None:
        await self._do(self.r.hset(self._task_key(task_id), "cancel", reason))

    async def cancel_requests(self, task_ids: Sequence[str]) -> dict[str, str]:
        async with self.r.pipeline(transaction=False) as pipe:
            for task_id in task_ids:
                pipe.hget(self._task_key(task_id), "cancel")
            reasons = await self._do(pipe.execute())
        return {task_id: reason.decode() for task_id, reason in zip(task_ids, reasons) if reason}

    async def read_events(self, task_id: str, after_sequence: int, limit: int = 1000) -> list[task_pb2.TaskEvent]:
        entries = await self._do(self.r.xrange(f"{self.p}ev:{task_id}", f"(0-{after_sequence}", "+", count=limit))
        return [task_pb2.TaskEvent.FromString(fields[b"e"]) for _, fields in entries]

    async def wait_events(self, task_id: str, after_sequence: int, timeout: float) -> list[task_pb2.TaskEvent]:
        """Events after `after_sequence`, waiting up to `timeout` for one. However many watchers
        follow a task on this replica, one blocking XREAD follows all of them (see redis_streams.StreamHub)."""
        key = f"{self.p}ev:{task_id}"
        if not self._hub.covers(key, after_sequence):
            events = await self.read_events(task_id, after_sequence)
            if events:
                return events
        followed = await self._hub.wait(key, after_sequence, timeout)
        return await self.read_events(task_id, after_sequence) if followed is None else followed

    # ---- queue and leases -----------------------------------------------------------------
    async def claim_task(self, owner: str, lease_seconds: float) -> tuple[task_pb2.Task, int] | None:
        reply = await self._do(self._claim(keys=[self.p + "queue", self.p + "leases"],
                                           args=[int((now_seconds() + lease_seconds) * 1000), owner, self.p + "task:"]))
        if not reply:
            return None
        return task_pb2.Task.FromString(reply[0]), int(reply[1])

    async def renew_leases(self, leases: Mapping[str, int], lease_seconds: float) -> list[str]:
        """Renew every lease in one round trip; return the tasks whose lease is no longer held."""
        if not leases:
            return []
        args: list[Any] = [int((now_seconds() + lease_seconds) * 1000), self.p + "task:"]
        for task_id, token in leases.items():
            args += [task_id, token]
        lost = await self._do(self._renew(keys=[self.p + "leases"], args=args))
        return [t.decode() for t in lost]

    async def release_expired_leases(self) -> int:
        count = await self._do(self._release(keys=[self.p + "leases", self.p + "queue"],
                                             args=[int(now_seconds() * 1000), self.p + "task:", *ACTIVE]))
        return int(count)

    async def purge_finished(self) -> int:
        """Redis expires finished tasks itself; this drops their ids from the listing index."""
        removed = 0
        cursor = 0
        while True:
            cursor, batch = await self._do(self.r.zscan(self.p + "tasks", cursor, count=500))
            if batch:
                async with self.r.pipeline(transaction=False) as pipe:
                    for task_id, _ in batch:
                        pipe.exists(self._task_key(task_id.decode()))
                    alive = await self._do(pipe.execute())
                gone = [task_id for (task_id, _), exists in zip(batch, alive) if not exists]
                if gone:
                    removed += int(await self._do(self.r.zrem(self.p + "tasks", *gone)))
            if cursor == 0:
                return removed

    async def queue_depth_by_priority(self, sample: int = 10_000) -> dict[int, int]:
        """Counts per priority over the first `sample` queued tasks (exact below that size)."""
        entries = await self._do(self.r.zrange(self.p + "queue", 0, sample - 1, withscores=True))
        depth: dict[int, int] = {}
        for _, score in entries:
            depth[int(-score)] = depth.get(int(-score), 0) + 1
        return depth

    async def queue_length(self) -> int:
        return int(await self._do(self.r.zcard(self.p + "queue")))

    # ---- registry -------------------------------------------------------------------------
    async def put_protocol(self, entry: registry_pb2.RegisteredProtocol) -> None:
        await self._do(self.r.hset(self.p + "protocols", entry.manifest.name, entry.SerializeToString()))

    async def delete_protocols(self, name: str = "", address: str = "") -> int:
        entries = await self.list_protocol_entries()
        doomed = [e.manifest.name for e in entries if e.manifest.name == name or (address and e.address == address)]
        if not doomed:
            return 0
        return int(await self._do(self.r.hdel(self.p + "protocols", *doomed)))

    async def list_protocol_entries(self) -> list[registry_pb2.RegisteredProtocol]:
        values = await self._do(self.r.hgetall(self.p + "protocols"))
        entries = [registry_pb2.RegisteredProtocol.FromString(v) for v in values.values()]
        return sorted(entries, key=lambda e: e.manifest.name)

    async def put_breaker_state(self, protocol: str, state: str) -> None:
        await self._do(self.r.hset(self.p + "breakers", protocol, state))

    async def breaker_states(self) -> dict[str, str]:
        values = await self._do(self.r.hgetall(self.p + "breakers"))
        return {k.decode(): v.decode() for k, v in values.items()}

    async def ping(self) -> None:
        await self._do(self.r.ping())

    async def close(self) -> None:
        await self.r.aclose()


