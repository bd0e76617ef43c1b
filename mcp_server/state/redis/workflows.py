"""Workflow versions on Redis (see WorkflowStore in engine/ports): a hash of versions per workflow,
the latest version of each, and the ids in order, all in the slot tagged {wf}."""

from __future__ import annotations

import asyncio
from typing import Any

from mcp_sdk.proto import workflow_pb2
from mcp_server.engine.events import now
from mcp_server.engine.ports.workflows import EventInterest, waited_events
from mcp_server.state.common import (
    decode_token,
    encode_token,
    now_seconds,
)
from mcp_server.state.redis.connection import RedisConnection


class RedisWorkflows:
    """WorkflowStore on Redis. A deleted version moves, marked with its delete_time, to the
    workflow's hash of deleted versions (same slot), where the tasks that ran it still read it
    until a purge removes the hash; the version counter stays."""

    def __init__(self, conn: RedisConnection) -> None:
        self.conn = conn
        self.layout = conn.layout
        self._latest = conn.register(LATEST_WORKFLOW)
        self._live_version = conn.register(LIVE_VERSION)
        self._delete = conn.register(DELETE_VERSIONS)
        self._forget = conn.register(FORGET_SUBSCRIBER)
        self._record = conn.register(RECORD_WAITED)
        self._interest = conn.register(READ_INTEREST)
        self._any_tasks = conn.register(ANY_TASKS)
        self._purge = conn.register(PURGE_DELETED)
        self._recording = asyncio.Lock()
        self._recorded = False  # seen set: it stays so (the record is only ever added to)

    async def create_workflow(self, workflow: workflow_pb2.Workflow) -> workflow_pb2.Workflow:
        stored = workflow_pb2.Workflow()
        stored.CopyFrom(workflow)
        stored.ClearField("delete_time")
        stored.version = int(
            await self.conn.do(self.conn.r.hincrby(self.layout.workflow_versions, workflow.workflow_id, 1))
        )
        stored.create_time.CopyFrom(now())
        await self._record_waits([stored])  # before any task can run the version
        async with self.conn.pipeline(transaction=True) as pipe:
            pipe.hset(self.layout.workflow(stored.workflow_id), str(stored.version), stored.SerializeToString())
            pipe.zadd(self.layout.workflow_ids, {stored.workflow_id: 0})
            for event in {trigger.event for trigger in stored.triggers}:
                pipe.hset(self.layout.event_subscribers(event), stored.workflow_id, stored.version)
            await self.conn.do(pipe.execute())
        return stored

    async def get_workflow(
        self, workflow_id: str, version: int = 0, deleted_too: bool = False
    ) -> workflow_pb2.Workflow | None:
        key = self.layout.workflow(workflow_id)
        if version and deleted_too:
            async with self.conn.pipeline(transaction=False) as pipe:
                pipe.hget(key, str(version))
                pipe.hget(self.layout.deleted_workflow(workflow_id), str(version))
                live, deleted = await self.conn.do(pipe.execute())
            data = live or deleted
        elif version:
            data = await self.conn.do(self.conn.r.hget(key, str(version)))
        else:
            data = await self.conn.do(self._latest(keys=[key, self.layout.workflow_versions], args=[workflow_id]))
        return workflow_pb2.Workflow.FromString(data) if data else None

    async def live_version(self, workflow_id: str, version: int = 0) -> int:
        """Asked on every submit: through the lane when there is one."""
        keys = [self.layout.workflow(workflow_id), self.layout.workflow_versions]
        return int(await self.conn.do(self.conn.script(self._live_version, keys, [workflow_id, version])))

    async def list_workflows(self, page_size: int, page_token: str) -> tuple[list[workflow_pb2.Workflow], str]:
        after = decode_token(page_token)
        low = f"({after}" if after else "-"
        ids = await self.conn.do(
            self.conn.r.zrangebylex(self.layout.workflow_ids, low, "+", start=0, num=page_size + 1)
        )
        workflows = []
        for raw in ids[:page_size]:
            workflow = await self.get_workflow(raw.decode())
            if workflow is not None:
                workflows.append(workflow)
        token = encode_token(ids[page_size - 1].decode()) if len(ids) > page_size else ""
        return workflows, token

    async def subscribers(self, event: str) -> list[tuple[str, int]]:
        return (await self.event_interest(event)).subscribers

    async def event_interest(self, event: str) -> EventInterest:
        """One round trip once this process has seen the record made (see _record_every_version)."""
        if not self._recorded:
            await self._record_every_version()
        key = self.layout.event_subscribers(event)
        keys = [key, self.layout.waited_events, self.layout.cancelling_events]
        flat, lookback, cancels = await self.conn.do(self.conn.script(self._interest, keys, [event]))
        entries = dict(zip(flat[::2], flat[1::2], strict=True))
        entries.pop(LEGACY_WAITED_FIELD, None)  # a build of 2026-12-03 kept the lookback here: not a workflow
        waited = float(lookback) if lookback is not None else None
        return EventInterest(await self._live(key, entries), waited, bool(cancels))

    async def _record_waits(self, workflows: list[workflow_pb2.Workflow]) -> None:
        """Record the events these versions wait for, keeping the longest lookback of each, and
        those their cancel_on names (no version from before cancel_on names one)."""
        waited: dict[str, float] = {}
        cancelling = sorted({cancel.event for workflow in workflows for cancel in workflow.cancel_on})
        if cancelling:
            await self.conn.do(self.conn.r.sadd(self.layout.cancelling_events, *cancelling))
        for workflow in workflows:
            for event, lookback in waited_events(workflow).items():
                waited[event] = max(waited.get(event, 0.0), lookback)
        if waited:
            pairs = [part for event in sorted(waited) for part in (event, repr(waited[event]))]
            await self.conn.write(self._record, [self.layout.waited_events], pairs)

    async def _record_every_version(self) -> None:
        """Record what every stored version waits for, deleted ones too, then mark it done: once per
        store (one from before the record may hold tasks waiting for events). Replicas that do it
        at once write the same; a create meanwhile records its own."""
        async with self._recording:
            if self._recorded or await self.conn.do(self.conn.r.exists(self.layout.waited_events_recorded)):
                self._recorded = True
                return
            ids = [raw.decode() for raw in await self.conn.do(self.conn.r.hkeys(self.layout.workflow_versions))]
            for start in range(0, len(ids), 100):
                async with self.conn.pipeline(transaction=False) as pipe:
                    for workflow_id in ids[start : start + 100]:
                        pipe.hvals(self.layout.workflow(workflow_id))
                        pipe.hvals(self.layout.deleted_workflow(workflow_id))
                    found = await self.conn.do(pipe.execute())
                await self._record_waits(
                    [workflow_pb2.Workflow.FromString(data) for versions in found for data in versions]
                )
            await self.conn.do(self.conn.r.set(self.layout.waited_events_recorded, 1))
            self._recorded = True

    async def _live(self, key: str, entries: dict[bytes, bytes]) -> list[tuple[str, int]]:
        """The entries a version with a trigger on the event wrote, kept where that version is still
        the workflow's live latest. An entry of an older version (a newer one dropped the trigger)
        or of a deleted workflow is removed, unless a create re-wrote it meanwhile."""
        named = sorted((raw.decode(), int(version)) for raw, version in entries.items())
        live = await asyncio.gather(*(self.live_version(workflow_id) for workflow_id, _ in named))
        found = []
        for (workflow_id, version), latest in zip(named, live, strict=True):
            if latest == version:
                found.append((workflow_id, version))
            else:
                await self.conn.do(self.conn.script(self._forget, [key], [workflow_id, version]))
        return found

    async def delete_workflow(self, workflow_id: str) -> int:
        key = self.layout.workflow(workflow_id)
        versions = await self.conn.do(self.conn.r.hgetall(key))
        if not versions:
            return 0
        deleted_at = now()
        marked: list[bytes] = []
        for version, data in versions.items():
            workflow = workflow_pb2.Workflow.FromString(data)
            workflow.delete_time.CopyFrom(deleted_at)
            marked += [version, workflow.SerializeToString()]
        keys = [key, self.layout.deleted_workflow(workflow_id), self.layout.workflow_ids, self.layout.deleted_workflows]
        deleted_ms = deleted_at.ToMilliseconds()
        return int(await self.conn.write(self._delete, keys, [workflow_id, deleted_ms, *marked]))

    async def purge_deleted(self, at_most: int) -> list[str]:
        """The deleted workflows are read a page at a time, oldest delete first, to the cutoff;
        whether a task of each remains is one script per partition for the page (its index of the
        workflow's tasks); the purge checks again that each was not deleted since."""
        cutoff = int(now_seconds() * 1000) - self.conn.retention_ms
        purged: list[str] = []
        offset = 0
        while len(purged) < at_most:
            page = [
                workflow_id.decode()
                for workflow_id in await self.conn.do(
                    self.conn.r.zrangebyscore(self.layout.deleted_workflows, "-inf", cutoff, start=offset, num=PAGE)
                )
            ]
            if not page:
                break
            calls: list[tuple[Any, list[str], list[Any]]] = [
                (self._any_tasks, [self.layout.index(p, 0, workflow=w) for w in page], [])
                for p in range(self.layout.partitions)
            ]
            busy = {page[i] for reply in await self.conn.scripts(calls) for i, flag in enumerate(reply) if flag}
            gone = [w for w in page if w not in busy][: at_most - len(purged)]
            if gone:
                keys = [self.layout.deleted_workflows, *(self.layout.deleted_workflow(w) for w in gone)]
                await self.conn.write(self._purge, keys, [cutoff, *gone])
                purged += gone
            offset += len(page) - len(gone)  # those purged left the set
            if len(page) < PAGE:
                break
        return purged


# KEYS: the workflow's versions hash, the latest-version hash; ARGV: workflow_id
LATEST_WORKFLOW = """
local version = redis.call('HGET', KEYS[2], ARGV[1])
if not version then return nil end
return redis.call('HGET', KEYS[1], version)
"""

# KEYS: the workflow's versions hash, the latest-version hash; ARGV: workflow_id, version (0: the
# latest) -> that version if it is there (not deleted), else 0
LIVE_VERSION = """
local version = ARGV[2]
if version == '0' then version = redis.call('HGET', KEYS[2], ARGV[1]) end
if version and redis.call('HEXISTS', KEYS[1], version) == 1 then return tonumber(version) end
return 0
"""

PAGE = 100  # deleted workflows looked at per round trip by a purge

# KEYS: the workflow's versions hash, its deleted versions' hash, the workflow ids, the deleted
# workflows; ARGV: workflow_id, when (ms), then (version, that version marked deleted) pairs -> how
# many this call deleted (a version made since it read them stays; one deleted meanwhile is not
# counted twice)
DELETE_VERSIONS = """
local deleted = 0
for i = 3, #ARGV, 2 do
  if redis.call('HDEL', KEYS[1], ARGV[i]) == 1 then
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
    deleted = deleted + 1
  end
end
if redis.call('HLEN', KEYS[1]) == 0 then redis.call('ZREM', KEYS[3], ARGV[1]) end
if deleted > 0 then redis.call('ZADD', KEYS[4], ARGV[2], ARGV[1]) end
return deleted
"""

# KEYS: indexes of tasks (one partition's) -> for each, 1 if it holds any task, else 0
ANY_TASKS = """
local found = {}
for i, key in ipairs(KEYS) do found[i] = redis.call('EXISTS', key) end
return found
"""

# KEYS: the deleted workflows, then each one's deleted versions' hash; ARGV: the cutoff (ms), then
# the workflow ids -> how many were purged (one deleted again since the read is left)
PURGE_DELETED = """
local purged = 0
for i = 2, #ARGV do
  local at = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if at and tonumber(at) <= tonumber(ARGV[1]) then
    redis.call('DEL', KEYS[i])
    redis.call('ZREM', KEYS[1], ARGV[i])
    purged = purged + 1
  end
end
return purged
"""

# KEYS: an event's subscribers; ARGV: workflow_id, the version its entry had when read -> the entry
# is removed only if it still names that version (a create since re-wrote it: it stays)
FORGET_SUBSCRIBER = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0
"""

# KEYS: the event's subscriber hash, the hash of waited events, the set of cancel_on names; ARGV:
# the event -> {the subscriber hash's fields and values, its lookback or nil, 1 when a cancel_on
# names it}: one round trip, as an HGETALL alone was
READ_INTEREST = """
return {redis.call('HGETALL', KEYS[1]), redis.call('HGET', KEYS[2], ARGV[1]), redis.call('SISMEMBER', KEYS[3], ARGV[1])}
"""
LEGACY_WAITED_FIELD = b"~waited"
# KEYS: the hash of waited events; ARGV: event, lookback (seconds), event, ... -> each keeps the
# longest lookback it was given
RECORD_WAITED = """
for i = 1, #ARGV, 2 do
  local had = redis.call('HGET', KEYS[1], ARGV[i])
  if not had or tonumber(had) < tonumber(ARGV[i + 1]) then redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
return 1
"""
