"""The step cache in a run: a step whose key matches a completed step's output (within its ttl)
takes that output and calls nothing; a step that calls stores what it produced."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from typing import Any

from mcp_server.engine.context import NodeFailed, NodeResult, RunContext
from mcp_server.engine.executor import evaluate
from mcp_server.engine.payload import Payload
from mcp_server.engine.plan import StepPlan
from mcp_server.engine.ports import CachedOutput, StepCache

# an output larger than this is not cached (it would cost more to keep than to make again)
MAX_CACHED_BYTES = 1024 * 1024
# a replica keeps its copy of an entry at most this long (the store's copy lives its whole ttl)
LOCAL_TTL = 60.0
log = logging.getLogger(__name__)


def cache_key(node: StepPlan, call_input: Payload, value: Payload, ctx: RunContext, scope: Mapping[str, Any]) -> str:
    """Where the step's output is cached: the owner's (or the shared) space, the protocol, and the
    key (CEL, or the canonical JSON of the input the protocol receives), hashed."""
    assert node.cache is not None
    if node.cache.key is None:
        text = json.dumps(call_input.python(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    else:
        found = evaluate(node.cache.key, ctx, value, scope, node.id, "cache key", extra={"call": call_input})
        if found is None:
            raise NodeFailed("INVALID_ARGUMENT", f"node {node.id}: its cache key gave null")
        text = found if isinstance(found, str) else json.dumps(found, sort_keys=True, separators=(",", ":"))
    space = "*" if node.cache.shared else f"o:{ctx.task.owner}"
    return hashlib.sha256(f"{space}\0{node.protocol}\0{text}".encode()).hexdigest()


class NearCache:
    """A step cache that keeps the entries this replica read or wrote lately, until their expiry
    (at most LOCAL_TTL), in front of the store's: a hit on one of them needs no round trip (an
    entry's key is its content's, so a copy never goes stale before its ttl)."""

    def __init__(self, store: StepCache, size: int = 10_000) -> None:
        self.store = store
        self.size = size
        self._entries: OrderedDict[str, tuple[float, CachedOutput]] = OrderedDict()

    async def get_output(self, key: str) -> CachedOutput | None:
        found = self._entries.get(key)
        if found is not None and found[0] > time.time():
            self._entries.move_to_end(key)
            return found[1]
        entry = await self.store.get_output(key)
        if entry is not None:
            self._keep(key, entry, entry.expires_at)
        return entry

    async def put_output(self, key: str, entry: CachedOutput, ttl: float) -> None:
        await self.store.put_output(key, entry, ttl)
        self._keep(key, entry, time.time() + ttl)

    async def remove_outputs_of(self, task_id: str) -> int:
        """The store's entries, and this replica's copies (the store tells the other replicas,
        which drop theirs: `drop_removed`)."""
        self._drop_task(task_id)
        return await self.store.remove_outputs_of(task_id)

    def removed_tasks(self) -> AsyncIterator[str]:
        return self.store.removed_tasks()

    async def drop_removed(self) -> None:
        """Drop the copies of outputs removed through other replicas as the store tells of them,
        for as long as it runs (a removal it does not hear of expires with LOCAL_TTL)."""
        while True:
            try:
                async for task_id in self.store.removed_tasks():
                    self._drop_task(task_id)
                return  # a store that has nothing to tell, or may not
            except Exception:  # a bug must not leave removed outputs served for good
                log.exception("following removed cache outputs failed unexpectedly; trying again")
                await asyncio.sleep(1.0)

    def _drop_task(self, task_id: str) -> None:
        for key in [k for k, (_, entry) in self._entries.items() if entry.task_id == task_id]:
            del self._entries[key]

    def _keep(self, key: str, entry: CachedOutput, expires_at: float) -> None:
        """Kept until the store's copy expires (or LOCAL_TTL from now, whichever is first)."""
        self._entries[key] = (min(expires_at, time.time() + LOCAL_TTL), entry)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)


async def cached_output(key: str, path: str, ctx: RunContext) -> NodeResult | None:
    """The cached output for `key`, marked on the step; None on a miss."""
    assert ctx.step_cache is not None
    cache = ctx.step_cache
    hit = await ctx.store_call(lambda: cache.get_output(key))  # waits out a store outage
    if hit is None:
        return None
    state = ctx.state(path)
    state.cached = True
    state.cached_from = hit.task_id
    ctx.cache_outcomes[path] = ("hit", len(hit.output))
    return NodeResult(Payload.of_bytes(hit.output))


async def keep_output(key: str, ttl: float, path: str, result: NodeResult, ctx: RunContext) -> None:
    """Store a step's output under `key` (unless it is too large to be worth keeping)."""
    assert ctx.step_cache is not None
    data = result.output.serialized()
    ctx.cache_outcomes[path] = ("miss", len(data))
    if len(data) <= MAX_CACHED_BYTES:
        cache, entry = ctx.step_cache, CachedOutput(ctx.task.task_id, data)
        await ctx.store_call(lambda: cache.put_output(key, entry, ttl))
