"""The mCP SDK: the orchestrator's contract, a client, and the plugin side.

    from mcp_sdk import Client, SyncClient, McpError, TaskFailed   # talk to an orchestrator
    from mcp_sdk.plugin import Plugin, Context                     # serve protocols
    from mcp_sdk.proto import task_pb2, workflow_pb2               # the generated contract

Nothing here needs the server: only grpcio, protobuf and Google's common protos.
"""

from mcp_sdk.client import Client, Tls
from mcp_sdk.errors import FieldViolation, McpError, TaskCancelled, TaskFailed
from mcp_sdk.sync import SyncClient

__all__ = ["Client", "FieldViolation", "McpError", "SyncClient", "TaskCancelled", "TaskFailed", "Tls"]
