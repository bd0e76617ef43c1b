"""The client's event method: publish what happened, and every workflow whose trigger takes it
gets a task (see events.proto)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping

from mcp_sdk.connection import Connection
from mcp_sdk.proto import events_pb2
from mcp_sdk.values import JsonValue


class EventMethods(Connection):
    async def publish_event(
        self,
        name: str,
        data: Mapping[str, JsonValue] | None = None,
        *,
        request_id: str | None = None,
        labels: Mapping[str, str] | None = None,
        priority: int = 0,
        key: str = "",
    ) -> events_pb2.PublishEventResponse:
        """Publish event `name` with `data` (and `key`, for the waits for it that name one); the
        reply lists the tasks it started (`tasks`), the workflows that took it but refused their
        input (`refused`) and the waits it reached (`woken`). Safe to repeat: a request id (the
        event's id) is generated when none is given, and a refusal for now whose retry time ends
        within `rate_limited_wait` is asked again, starting only what is missing."""
        request = events_pb2.PublishEventRequest(
            name=name, request_id=request_id or uuid.uuid4().hex, labels=dict(labels or {}), priority=priority, key=key
        )
        if data:
            request.data.update(dict(data))
        reply: events_pb2.PublishEventResponse = await self._submission(self.events.PublishEvent, request)
        return reply
