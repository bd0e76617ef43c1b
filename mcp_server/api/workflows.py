"""WorkflowService servicer: unpack, call the orchestrator, pack."""

from __future__ import annotations

import grpc

from mcp_sdk.proto import workflow_pb2, workflow_pb2_grpc
from mcp_server.errors import FieldViolation, InvalidArgument
from mcp_server.orchestrator import Orchestrator


def _workflow_of(
    request: workflow_pb2.CreateWorkflowRequest | workflow_pb2.ValidateWorkflowRequest,
) -> workflow_pb2.Workflow:
    if not request.HasField("workflow"):
        raise InvalidArgument("workflow is required", violations=[FieldViolation("workflow", "is required")])
    return request.workflow


class WorkflowServicer(workflow_pb2_grpc.WorkflowServiceServicer):
    def __init__(self, orchestrator: Orchestrator) -> None:
        self.orchestrator = orchestrator

    async def CreateWorkflow(
        self, request: workflow_pb2.CreateWorkflowRequest, context: grpc.aio.ServicerContext
    ) -> workflow_pb2.CreateWorkflowResponse:
        return workflow_pb2.CreateWorkflowResponse(
            workflow=await self.orchestrator.workflows.create_workflow(_workflow_of(request))
        )

    async def GetWorkflow(
        self, request: workflow_pb2.GetWorkflowRequest, context: grpc.aio.ServicerContext
    ) -> workflow_pb2.GetWorkflowResponse:
        return workflow_pb2.GetWorkflowResponse(
            workflow=await self.orchestrator.workflows.get_workflow(request.workflow_id, request.version)
        )

    async def ListWorkflows(
        self, request: workflow_pb2.ListWorkflowsRequest, context: grpc.aio.ServicerContext
    ) -> workflow_pb2.ListWorkflowsResponse:
        workflows, token = await self.orchestrator.workflows.list_workflows(request.page_size, request.page_token)
        return workflow_pb2.ListWorkflowsResponse(workflows=workflows, next_page_token=token)

    async def DeleteWorkflow(
        self, request: workflow_pb2.DeleteWorkflowRequest, context: grpc.aio.ServicerContext
    ) -> workflow_pb2.DeleteWorkflowResponse:
        return workflow_pb2.DeleteWorkflowResponse(
            versions_deleted=await self.orchestrator.workflows.delete_workflow(request.workflow_id)
        )

    async def ValidateWorkflow(
        self, request: workflow_pb2.ValidateWorkflowRequest, context: grpc.aio.ServicerContext
    ) -> workflow_pb2.ValidateWorkflowResponse:
        plan = await self.orchestrator.workflows.validate_workflow(_workflow_of(request))
        return workflow_pb2.ValidateWorkflowResponse(
            valid=True, node_count=plan.node_count, depth=plan.depth, protocols=sorted(plan.protocols)
        )
