"""The chain and fan-out figures on a local six-node Redis Cluster (three masters, three
replicas, on the same two cores), with and without wait_replicas=1, against one Redis node in
the same run; and what one master and one orchestrator can carry, for the capacity model."""

from __future__ import annotations

import os
import uuid

import grpc

from bench.chains import System, fanout_floor, redis_pid
from bench.harness import Orchestrated, Proc, Stat, chain, repeat, start_orchestrator
from bench.report import REDIS, table
from mcp_sdk.proto import protocol_pb2_grpc
from tests.support.redis_cluster import start_cluster

USABLE = 0.7


async def bench_cluster(plugin: Proc, quick: bool) -> None:
    samples, rounds, total = (40, 3, 192) if quick else (150, 3, 640)
    cluster = start_cluster()
    servers: list[Proc] = []
    clients: list[Orchestrated] = []
    try:
        stores = {
            "one redis node": f"{REDIS}?prefix=bench:{uuid.uuid4().hex[:8]}:",
            "cluster": f"{cluster.url}?prefix=bench:",
            "cluster, wait_replicas=1": f"{cluster.url}?prefix=benchwait:&wait_replicas=1",
        }
        node_pids = {f"redis {port}": process.pid for port, process in cluster.processes.items()}
        systems = []
        for name, url in stores.items():
            server = start_orchestrator(url, [plugin.address])
            servers.append(server)
            client = Orchestrated(server.address)
            clients.append(client)
            await client.create(chain("three", 3))
            await client.create(
                {
                    "workflow_id": "fan",
                    "root": {
                        "id": "fan",
                        "parallel": {
                            "max_concurrency": 100,
                            "children": [
                                {"id": f"b{i}", "step": {"protocol": "sleep", "input": "{'ms': 100}"}}
                                for i in range(100)
                            ],
                        },
                    },
                }
            )
            await client.run("three")
            redis = {"redis": redis_pid(REDIS)} if name == "one redis node" else node_pids
            systems.append(
                System(
                    name,
                    _runner(client),
                    {"client": os.getpid(), "orchestrator": server.process.pid, "plugin": plugin.process.pid, **redis},
                )
            )
        for _ in range(rounds):
            for system in systems:
                await system.round(samples, total)
        fans: dict[str, Stat] = {}
        channel = grpc.aio.insecure_channel(plugin.address)
        fans["bare gRPC gather"] = await repeat(
            3, lambda: fanout_floor(protocol_pb2_grpc.ProtocolServiceStub(channel), 100, 100)
        )
        await channel.close()
        for name, client in zip(stores, clients):
            fans[name] = Stat([r * 1000 for r in (await repeat(3, lambda c=client: c.run("fan"))).runs])  # type: ignore[misc]
        masters = cluster.masters()
    finally:
        for client in clients:
            await client.close()
        for server in servers:
            server.stop()
        cluster.stop()
    rows: list[tuple[str, Stat | float | str, str]] = []
    for system in systems:
        redis_cpu = sum(
            v
            for k, values in system.cpu_by_process.items()
            if k.startswith("redis")
            for v in [sorted(values)[len(values) // 2]]
        )
        rows += [
            (f"{system.name}: 3-step p50 ms", system.p50, ""),
            (f"{system.name}: chains/s, 64 in flight", system.rate, ""),
            (f"{system.name}: CPU ms per chain, all processes", system.cpu, f"redis (all nodes) {redis_cpu:.2f}"),
        ]
    rows += [(f"fan-out 100 x 100 ms, {name}: wall ms", stat, "") for name, stat in fans.items()]
    clustered = systems[1]
    per_master = sum(
        sorted(v)[len(v) // 2] for k, v in clustered.cpu_by_process.items() if k.startswith("redis")
    ) / max(len(masters), 1)
    orchestrator = sorted(clustered.cpu_by_process["orchestrator"])[1]
    rows += [
        (
            "cluster: redis CPU ms per 3-step task, per master (replicas included)",
            f"{per_master:.3f}",
            f"one master core at {USABLE:.0%}: {USABLE * 1000 / per_master:.0f} 3-step tasks/s",
        ),
        (
            "cluster: orchestrator CPU ms per 3-step task",
            f"{orchestrator:.2f}",
            f"one orchestrator core at {USABLE:.0%}: {USABLE * 1000 / orchestrator:.0f} 3-step tasks/s",
        ),
    ]
    table("Redis Cluster: 3 masters + 3 replicas on the same 2 cores (same run, rounds interleaved)", rows)


def _runner(client: Orchestrated):  # type: ignore[no-untyped-def]
    return lambda: client.run("three")
