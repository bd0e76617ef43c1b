"""EventService servicer: unpack, call the orchestrator, pack."""

from __future__ import annotations

import grpc

from mcp_sdk.proto import events_pb2, events_pb2_grpc
from mcp_server.auth import current_principal
from mcp_server.orchestrator import Orchestrator


class EventServicer(events_pb2_grpc.EventServiceServicer):
    def __init__(self, orchestrator: Orchestrator) -> None:
        self.events = orchestrator.events

    async def PublishEvent(
        self, request: events_pb2.PublishEventRequest, context: grpc.aio.ServicerContext
    ) -> events_pb2.PublishEventResponse:
        return await self.events.publish(request, current_principal.get())
