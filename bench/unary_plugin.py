"""A plugin written from protocol.proto alone, as a Go or Node plugin would be: Describe and a
unary Execute, nothing else (ExecuteMany answers UNIMPLEMENTED, so the orchestrator calls it with
Execute). `echo` returns its input; `sleep` waits `ms` milliseconds. The thin orchestrator's step
server is the same kind of server, so ratios against it compare like with like.

`python -m bench.unary_plugin` prints `MCP_PLUGIN_LISTENING host:port`.
"""

from __future__ import annotations

import asyncio

import grpc

from mcp_sdk.proto import protocol_pb2, protocol_pb2_grpc
from mcp_sdk.serving import pending_call_options
from mcp_server.plugin_host import READY_LINE


class UnaryPlugin(protocol_pb2_grpc.ProtocolServiceServicer):
    async def Describe(
        self, request: protocol_pb2.DescribeRequest, context: grpc.aio.ServicerContext
    ) -> protocol_pb2.DescribeResponse:
        return protocol_pb2.DescribeResponse(
            protocols=[
                protocol_pb2.ProtocolManifest(name="echo", version="1.0.0", description="returns its input"),
                protocol_pb2.ProtocolManifest(name="sleep", version="1.0.0", description="waits input.ms"),
            ]
        )

    async def Execute(
        self, request: protocol_pb2.ExecuteRequest, context: grpc.aio.ServicerContext
    ) -> protocol_pb2.ExecuteResponse:
        if request.protocol == "sleep":
            await asyncio.sleep(request.input.fields["ms"].number_value / 1000)
        return protocol_pb2.ExecuteResponse(output=request.input)


async def serve() -> None:
    server = grpc.aio.server(options=pending_call_options(20_000))
    protocol_pb2_grpc.add_ProtocolServiceServicer_to_server(UnaryPlugin(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"{READY_LINE} 127.0.0.1:{port}", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(serve())
