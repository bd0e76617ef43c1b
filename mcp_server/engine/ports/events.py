"""The events port: what a workflow's publish node needs to publish an event (the EventService
does it, see service/events.py), so that the engine imports no service code."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

HOPS_LABEL = "mcp/event-hops"  # on a task an event published by a task started: how many such links before it


@dataclass(frozen=True)
class Published:
    """What a publish started: (workflow_id, task_id) per task, and (workflow_id, why) per refusal;
    the waits it reached: (task_id, step path) per wait."""

    event_id: str
    started: tuple[tuple[str, str], ...]
    refused: tuple[tuple[str, str], ...]
    woken: tuple[tuple[str, str], ...] = ()


class EventPublisher(Protocol):
    async def publish_for(
        self, name: str, data: Mapping[str, Any], request_id: str, owner: str, hops: int, key: str = ""
    ) -> Published:
        """Publish event `name` with `key` as `owner` would (once per `request_id`); the tasks it
        starts carry `hops` in HOPS_LABEL. Raises McpError as PublishEvent would answer."""
        ...

    async def deliver_kept(self, task_id: str, owner: str, path: str, name: str, key: str, since_ms: int) -> None:
        """Give the wait at `path` of task `task_id` (owned by `owner`, held by this run) the first
        event of `name` with `key` ("": any key) kept since `since_ms` that it may take, if any
        (WaitNode.lookback). Raises McpError as SignalTask would answer."""
        ...
