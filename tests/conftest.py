"""Shared fixtures: real plugin processes, a real orchestrator on loopback, real stores.

Plugins are started once per session as separate processes. Each test gets its own
orchestrator (its own gRPC server on a free port) and its own store: a fresh in-memory SQLite
database, or a fresh key prefix on the Redis at MCP_TEST_REDIS_URL (default
redis://127.0.0.1:6379/0), deleted afterwards.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass

import grpc
import pytest
import redis

from mcp_sdk.proto import (
    bulk_pb2_grpc,
    events_pb2_grpc,
    protocol_pb2,
    protocol_pb2_grpc,
    registry_pb2_grpc,
    schedule_pb2_grpc,
    task_pb2_grpc,
    workflow_pb2_grpc,
)
from mcp_server.api.server import RunningServer, start_server
from mcp_server.plugin_host import READY_LINE
from mcp_server.settings import Limits, Settings
from tests.support.redis_cluster import LocalCluster, start_cluster
from tests.support.redis_server import TestRedis


@dataclass
class PluginProc:
    module: str
    process: subprocess.Popen[str]
    address: str


def spawn_plugin(module: str, listen: str = "127.0.0.1:0", *extra: str) -> PluginProc:
    """Start a plugin process (with `extra` arguments, e.g. "--capacity", "gpus=1") and wait for its ready line."""
    process = subprocess.Popen(
        [sys.executable, "-m", "protocol_plugins.run", module, "--listen", listen, *extra],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.startswith(READY_LINE):
        process.kill()
        raise RuntimeError(f"plugin {module} did not start: {line!r}")
    return PluginProc(module, process, line.split()[1])


@pytest.fixture(scope="session")
def plugins() -> Iterator[dict[str, PluginProc]]:
    procs = {m: spawn_plugin(f"protocol_plugins.{m}") for m in ("testkit", "cognitive", "writing", "chaos")}
    yield procs
    for proc in procs.values():
        proc.process.terminate()
        proc.process.wait(timeout=10)


@pytest.fixture(scope="session")
def redis_base_url() -> Iterator[str]:
    """A real Redis: the configured one, the local one, or a private one started for the session."""
    server = TestRedis()
    yield server.url
    server.stop()


@pytest.fixture
def redis_url(redis_base_url: str) -> Iterator[str]:
    """A fresh key prefix on the test Redis, deleted afterwards."""
    prefix = f"mcptest:{uuid.uuid4().hex[:12]}:"
    client = redis.Redis.from_url(redis_base_url)
    yield f"{redis_base_url}?prefix={prefix}"
    keys = list(client.scan_iter(f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[LocalCluster]:
    """A real six-node Redis Cluster for the session (see tests/support/redis_cluster.py)."""
    cluster = start_cluster()
    yield cluster
    cluster.stop()


@pytest.fixture
def cluster_url(redis_cluster: LocalCluster) -> Iterator[str]:
    """A fresh key prefix on the session's Redis Cluster, deleted afterwards."""
    prefix = f"mcptest:{uuid.uuid4().hex[:12]}:"
    yield f"{redis_cluster.url}?prefix={prefix}"
    for port in redis_cluster.masters():
        client = redis.Redis(port=port)
        keys = list(client.scan_iter(f"{prefix}*", count=1000))
        for key in keys:
            client.delete(key)
        client.close()


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: object) -> str:
    if request.param == "sqlite":
        return "sqlite://:memory:"
    return str(request.getfixturevalue("redis_url"))


@pytest.fixture
async def parking_server(
    server_factory: Callable[..., Awaitable[RunningServer]], store_url: str
) -> AsyncIterator[tuple[RunningServer, Client]]:
    """A server on each store whose runs park after 0.1 s with every branch waiting, and a client."""
    running = await server_factory(store=store_url, wait_in_memory_seconds=0.1)
    client = client_for(running)
    yield running, client
    await client.channel.close()


@pytest.fixture
async def events_server(
    server_factory: Callable[..., Awaitable[RunningServer]], store_url: str
) -> AsyncIterator[tuple[RunningServer, Client, events_pb2_grpc.EventServiceStub]]:
    """A server as shipped on each store, a client, and the client's EventService stub."""
    running = await server_factory(store=store_url)
    client = client_for(running)
    yield running, client, client.events
    await client.channel.close()


def make_settings(store_url: str, plugin_addresses: tuple[str, ...], **overrides: object) -> Settings:
    limits = overrides.pop("limits", Limits())
    fields: dict[str, object] = {"lease_seconds": 3.0, "shutdown_grace": 1.0, **overrides}
    return Settings(
        listen="127.0.0.1:0",
        store_url=store_url,
        plugins=plugin_addresses,
        limits=limits,
        replica_id=f"test-{uuid.uuid4().hex[:6]}",
        **fields,
    )  # type: ignore[arg-type]


@pytest.fixture
async def server(plugins: dict[str, PluginProc]) -> AsyncIterator[RunningServer]:
    """An orchestrator on the embedded store with both bundled plugins registered."""
    running = await start_server(make_settings("sqlite://:memory:", tuple(p.address for p in plugins.values())))
    yield running
    await asyncio.wait_for(running.stop(0.5), 30)


@dataclass
class Client:
    channel: grpc.aio.Channel
    tasks: task_pb2_grpc.TaskServiceStub
    workflows: workflow_pb2_grpc.WorkflowServiceStub
    registry: registry_pb2_grpc.ProtocolRegistryStub

    @property
    def schedules(self) -> schedule_pb2_grpc.ScheduleServiceStub:
        return schedule_pb2_grpc.ScheduleServiceStub(self.channel)

    @property
    def bulk_actions(self) -> bulk_pb2_grpc.BulkActionServiceStub:
        return bulk_pb2_grpc.BulkActionServiceStub(self.channel)

    @property
    def events(self) -> events_pb2_grpc.EventServiceStub:
        return events_pb2_grpc.EventServiceStub(self.channel)


@pytest.fixture
async def client(server: RunningServer) -> AsyncIterator[Client]:
    async with grpc.aio.insecure_channel(server.address) as channel:
        yield Client(
            channel,
            task_pb2_grpc.TaskServiceStub(channel),
            workflow_pb2_grpc.WorkflowServiceStub(channel),
            registry_pb2_grpc.ProtocolRegistryStub(channel),
        )


@pytest.fixture
async def testkit(plugins: dict[str, PluginProc]) -> AsyncIterator[protocol_pb2_grpc.ProtocolServiceStub]:
    """A direct channel to the testkit plugin, to read and reset what it observed."""
    async with grpc.aio.insecure_channel(plugins["testkit"].address) as channel:
        stub = protocol_pb2_grpc.ProtocolServiceStub(channel)
        await stub.Execute(protocol_pb2.ExecuteRequest(protocol="stats", input={"reset": True}))
        yield stub


@pytest.fixture(scope="session")
def chaos_plugin(plugins: dict[str, PluginProc]) -> PluginProc:
    return plugins["chaos"]


@pytest.fixture
async def server_factory(plugins: dict[str, PluginProc]) -> AsyncIterator[Callable[..., Awaitable[RunningServer]]]:
    """Start orchestrators with custom settings (the session's plugins registered); stop them after."""
    started: list[RunningServer] = []

    async def start(
        store: str = "sqlite://:memory:",
        extra_plugins: tuple[str, ...] = (),
        session_plugins: bool = True,
        **overrides: object,
    ) -> RunningServer:
        addresses = (*(p.address for p in plugins.values() if session_plugins), *extra_plugins)
        running = await start_server(make_settings(store, addresses, **overrides))
        started.append(running)
        return running

    yield start
    for running in started:
        await asyncio.wait_for(running.stop(0.5), 30)


def client_for(running: RunningServer) -> Client:
    return client_for_address(running.address)


def client_for_address(address: str) -> Client:
    channel = grpc.aio.insecure_channel(address)
    return Client(
        channel,
        task_pb2_grpc.TaskServiceStub(channel),
        workflow_pb2_grpc.WorkflowServiceStub(channel),
        registry_pb2_grpc.ProtocolRegistryStub(channel),
    )
