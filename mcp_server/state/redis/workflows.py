"""Workflow versions on Redis (see WorkflowStore in engine/ports): a hash of versions per workflow,
the latest version of each, and the ids in order, all in the slot tagged {wf}."""

from __future__ import annotations

from mcp_sdk.proto import workflow_pb2
from mcp_server.engine.events import now
from mcp_server.state.common import (
    decode_token,
    encode_token,
)
from mcp_server.state.redis.connection import RedisConnection


class RedisWorkflows:
    """WorkflowStore on Redis."""

    def __init__(self, conn: RedisConnection) -> None:
        self.conn = conn
        self.layout = conn.layout
        self._latest = conn.register(LATEST_WORKFLOW)
        self._latest_version = conn.register(LATEST_VERSION)

    async def create_workflow(self, workflow: workflow_pb2.Workflow) -> workflow_pb2.Workflow:
        stored = workflow_pb2.Workflow()
        stored.CopyFrom(workflow)
        stored.version = int(
            await self.conn.do(self.conn.r.hincrby(self.layout.workflow_versions, workflow.workflow_id, 1))
        )
        stored.create_time.CopyFrom(now())
        async with self.conn.pipeline(transaction=True) as pipe:
            pipe.hset(self.layout.workflow(stored.workflow_id), str(stored.version), stored.SerializeToString())
            pipe.zadd(self.layout.workflow_ids, {stored.workflow_id: 0})
            await self.conn.do(pipe.execute())
        return stored

    async def get_workflow(self, workflow_id: str, version: int = 0) -> workflow_pb2.Workflow | None:
        key = self.layout.workflow(workflow_id)
        if version:
            data = await self.conn.do(self.conn.r.hget(key, str(version)))
        else:
            data = await self.conn.do(self._latest(keys=[key, self.layout.workflow_versions], args=[workflow_id]))
        return workflow_pb2.Workflow.FromString(data) if data else None

    async def latest_workflow_version(self, workflow_id: str) -> int:
        """Asked on every submit without a version: through the lane when there is one."""
        return int(
            await self.conn.do(
                self.conn.script(
                    self._latest_version,
                    [self.layout.workflow(workflow_id), self.layout.workflow_versions],
                    [workflow_id],
                )
            )
        )

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

    async def delete_workflow(self, workflow_id: str) -> int:
        key = self.layout.workflow(workflow_id)
        async with self.conn.pipeline(transaction=True) as pipe:
            pipe.hlen(key)
            pipe.delete(key)
            pipe.zrem(self.layout.workflow_ids, workflow_id)
            count, _, _ = await self.conn.do(pipe.execute())
        return int(count)


# KEYS: the workflow's versions hash, the latest-version hash; ARGV: workflow_id
LATEST_WORKFLOW = """
local version = redis.call('HGET', KEYS[2], ARGV[1])
if not version then return nil end
return redis.call('HGET', KEYS[1], version)
"""

# KEYS: the workflow's versions hash, the latest-version hash; ARGV: workflow_id -> the version, or 0
LATEST_VERSION = """
local version = redis.call('HGET', KEYS[2], ARGV[1])
if version and redis.call('HEXISTS', KEYS[1], version) == 1 then return tonumber(version) end
return 0
"""
