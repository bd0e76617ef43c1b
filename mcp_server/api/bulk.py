"""BulkActionService servicer: unpack, call the orchestrator, pack."""

from __future__ import annotations

import grpc

from mcp_sdk.proto import bulk_pb2, bulk_pb2_grpc
from mcp_server.auth import current_principal
from mcp_server.orchestrator import Orchestrator


class BulkActionServicer(bulk_pb2_grpc.BulkActionServiceServicer):
    def __init__(self, orchestrator: Orchestrator) -> None:
        self.bulk = orchestrator.bulk

    async def StartBulkAction(
        self, request: bulk_pb2.StartBulkActionRequest, context: grpc.aio.ServicerContext
    ) -> bulk_pb2.BulkAction:
        return await self.bulk.start(request, current_principal.get())

    async def GetBulkAction(
        self, request: bulk_pb2.GetBulkActionRequest, context: grpc.aio.ServicerContext
    ) -> bulk_pb2.BulkAction:
        return await self.bulk.get(request.action_id, current_principal.get())

    async def ListBulkActions(
        self, request: bulk_pb2.ListBulkActionsRequest, context: grpc.aio.ServicerContext
    ) -> bulk_pb2.ListBulkActionsResponse:
        found, token = await self.bulk.list(request.page_size, request.page_token, current_principal.get())
        return bulk_pb2.ListBulkActionsResponse(bulk_actions=found, next_page_token=token)

    async def AbortBulkAction(
        self, request: bulk_pb2.AbortBulkActionRequest, context: grpc.aio.ServicerContext
    ) -> bulk_pb2.BulkAction:
        return await self.bulk.abort(request.action_id, request.reason, current_principal.get())
