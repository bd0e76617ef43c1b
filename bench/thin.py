"""The thinnest orchestrator worth comparing against: a grpc.aio service that runs an N-step
chain of plugin calls, feeding each output into the next, with one Redis MULTI per step (a
small snapshot and an event), and answers with the last output. No queue, no leases, no
event log a client can follow, no retries: the floor a real orchestrator's cost is measured
against (`python -m bench.thin --plugin ADDR --redis URL [--listen HOST:PORT]` prints `THIN_LISTENING host:port`;
several started on one port share it, as the server's --processes do).

Clients call it through the ProtocolService contract: Execute(protocol="chain", input={"steps": N, ...}).
"""

from __future__ import annotations

import argparse
import asyncio
import uuid

import grpc
import redis.asyncio as aioredis

from mcp_sdk.proto import protocol_pb2, protocol_pb2_grpc

READY_LINE = "THIN_LISTENING"


class ThinOrchestrator(protocol_pb2_grpc.ProtocolServiceServicer):
    def __init__(self, plugin: protocol_pb2_grpc.ProtocolServiceStub, store: aioredis.Redis) -> None:
        self.plugin = plugin
        self.store = store

    async def Execute(
        self, request: protocol_pb2.ExecuteRequest, context: grpc.aio.ServicerContext
    ) -> protocol_pb2.ExecuteResponse:
        steps = int(request.input.fields["steps"].number_value)
        run = uuid.uuid4().hex
        value = request.input
        for index in range(steps):
            call = protocol_pb2.ExecuteRequest(
                protocol="echo", input=value, context=protocol_pb2.ExecutionContext(task_id=run, step_path=f"s{index}")
            )
            value = (await self.plugin.Execute(call)).output
            async with self.store.pipeline(transaction=True) as pipe:
                pipe.hset(f"bench:thin:{run}", mapping={"step": index, "output": value.SerializeToString()})
                pipe.xadd(f"bench:thin:{run}:events", {"step": index, "status": "completed"})
                await pipe.execute()
        return protocol_pb2.ExecuteResponse(output=value)


async def serve(plugin_address: str, redis_url: str, listen: str) -> None:
    channel = grpc.aio.insecure_channel(plugin_address)
    store = aioredis.from_url(redis_url)
    server = grpc.aio.server()
    protocol_pb2_grpc.add_ProtocolServiceServicer_to_server(
        ThinOrchestrator(protocol_pb2_grpc.ProtocolServiceStub(channel), store), server
    )
    port = server.add_insecure_port(listen)  # gRPC sets SO_REUSEPORT: processes may share a port
    await server.start()
    print(f"{READY_LINE} {listen.rpartition(':')[0]}:{port}", flush=True)
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench.thin")
    parser.add_argument("--plugin", required=True)
    parser.add_argument("--redis", required=True)
    parser.add_argument("--listen", default="127.0.0.1:0", help="host:port (port 0: any free one)")
    args = parser.parse_args()
    asyncio.run(serve(args.plugin, args.redis, args.listen))


if __name__ == "__main__":
    main()
