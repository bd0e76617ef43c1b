"""The memory floor of a task in flight: what one pending grpc.aio unary call costs a Python
process by itself. `python -m bench.callmem --plugin ADDR --calls N` holds N calls to the
plugin's `sleep` in flight and prints `CALL_KB <RSS growth per call in KB>`; bench scale
runs it beside the orchestrator's own figure (a task waiting on a step holds one such call)."""

from __future__ import annotations

import argparse
import asyncio
import gc

import grpc

from mcp_sdk.proto import protocol_pb2, protocol_pb2_grpc
from mcp_server.engine.values import dict_to_struct


def rss_kb() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def measure(plugin: str, calls: int) -> float:
    # the options the orchestrator's plugin channels use (protocols/channels.py): gRPC's own
    # retries off, which alone saves ~4 KB per call in flight
    async with grpc.aio.insecure_channel(plugin, options=[("grpc.enable_retries", 0)]) as channel:
        stub = protocol_pb2_grpc.ProtocolServiceStub(channel)
        await stub.Execute(protocol_pb2.ExecuteRequest(protocol="echo", input=dict_to_struct({"x": 1})))
        gc.collect()
        await asyncio.sleep(1)
        before = rss_kb()
        request = protocol_pb2.ExecuteRequest(protocol="sleep", input=dict_to_struct({"ms": 60_000}))
        pending = [asyncio.ensure_future(stub.Execute(request)) for _ in range(calls)]
        await asyncio.sleep(5)
        gc.collect()
        growth = (rss_kb() - before) / calls
        for call in pending:
            call.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        return growth


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench.callmem")
    parser.add_argument("--plugin", required=True)
    parser.add_argument("--calls", type=int, default=10_000)
    args = parser.parse_args()
    print(f"CALL_KB {asyncio.run(measure(args.plugin, args.calls)):.1f}", flush=True)


if __name__ == "__main__":
    main()
