"""The step cache port: completed steps' outputs by key, for a time (see StepNode.cache)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class CachedOutput:
    """A step's output as the cache keeps it: the task whose step stored it, and the output (a
    serialized google.protobuf.Value)."""

    task_id: str
    output: bytes
    expires_at: float = 0.0  # Unix seconds (as the store read it back; 0 when it is being stored)


class StepCache(Protocol):
    async def get_output(self, key: str) -> CachedOutput | None:
        """The output stored under `key` and not expired, or None."""
        ...

    async def put_output(self, key: str, entry: CachedOutput, ttl: float) -> None:
        """Store (or replace) the output under `key` for `ttl` seconds."""
        ...

    async def remove_outputs_of(self, task_id: str) -> int:
        """Remove the outputs the steps of `task_id` stored (not those another task stored since
        under the same key); how many."""
        ...

    def removed_tasks(self) -> AsyncIterator[str]:
        """The ids of tasks whose outputs `remove_outputs_of` removed, through any process, as they
        come, for as long as it is iterated (so that each drops its copies in memory); it may miss
        some (a dropped connection). A store no other process uses ends it at once."""
        ...
