"""A newcomer's `make run`, as real processes: where the embedded store lives, a store that cannot
be created, and the bundled plugins' instances across a stop, a restart and a kill -9."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from mcp_sdk.proto import registry_pb2, task_pb2
from tests.conftest import client_for_address, spawn_plugin
from tests.e2e.test_server_process import free_port, read_until
from tests.helpers import create, events, step, submit, wait_done, workflow

ROOT = Path(__file__).resolve().parents[2]
E = task_pb2.TaskEventType


def serve(*args: str, cwd: Path = ROOT, **env: str) -> subprocess.Popen[str]:
    """`python -m mcp_server ARGS` from `cwd`, its output on a pipe."""
    return subprocess.Popen(
        [sys.executable, "-m", "mcp_server", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
    )


def stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0


def answers(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=0.5):
            return True
    except OSError:
        return False


async def instances(address: str) -> list[registry_pb2.RegisteredProtocol]:
    client = client_for_address(address)
    try:
        return list((await client.registry.ListProtocols(registry_pb2.ListProtocolsRequest())).protocols)
    finally:
        await client.channel.close()


def test_the_default_store_is_a_file_in_the_working_directory_named_at_start(tmp_path):
    server = serve("--listen", f"127.0.0.1:{free_port()}", cwd=tmp_path)
    try:
        line = read_until(server, "listening on")
        assert (tmp_path / ".mcp" / "mcp.db").is_file()
        assert f"SQLite file {tmp_path / '.mcp' / 'mcp.db'}" in line
    finally:
        stop(server)
    assert not Path("/.mcp/mcp.db").exists() or Path("/.mcp/mcp.db").stat().st_mtime < time.time() - 60


def test_a_store_path_that_cannot_be_created_stops_the_server_with_one_line(tmp_path):
    (tmp_path / "a-file").write_text("not a directory")
    server = serve("--listen", f"127.0.0.1:{free_port()}", "--store", f"sqlite:///{tmp_path}/a-file/sub/mcp.db")
    output, _ = server.communicate(timeout=30)
    assert server.returncode == 1
    lines = output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in output, output
    assert lines[0].startswith("mcp-server: cannot start: cannot open the SQLite store at ")
    assert f"{tmp_path}/a-file/sub/mcp.db" in lines[0] and "sqlite:////absolute/path" in lines[0]


def test_a_store_url_that_names_no_file_is_refused_with_the_forms_it_takes():
    server = serve("--listen", f"127.0.0.1:{free_port()}", "--store", "sqlite://somehost/mcp.db")
    output, _ = server.communicate(timeout=30)
    assert server.returncode == 1 and len(output.strip().splitlines()) == 1, output
    assert "sqlite:///relative/path" in output and "Traceback" not in output


async def test_a_restart_on_the_same_store_lists_each_bundled_protocol_once_and_needs_no_retry(tmp_path):
    store = f"sqlite:///{tmp_path}/mcp.db"
    address = f"127.0.0.1:{free_port()}"
    first = serve("--bundled-plugins", "--listen", address, "--store", store)
    read_until(first, "listening on")
    before = {(p.manifest.name, p.address) for p in await instances(address)}
    stop(first)
    second = serve("--bundled-plugins", "--listen", address, "--store", store)
    try:
        read_until(second, "listening on")
        listed = await instances(address)
        names = [p.manifest.name for p in listed]
        assert sorted(names) == sorted(set(names)), "a protocol is listed more than once"
        assert {"echo", "emotion", "draft", "critique"} <= set(names)
        assert all(p.health == registry_pb2.HEALTH_STATE_SERVING for p in listed)
        assert not {(p.manifest.name, p.address) for p in listed} & before  # the old instances are gone
        client = client_for_address(address)
        try:
            await create(client, workflow("first", step("hello", "echo")))
            task = await wait_done(client, (await submit(client, "first", {"n": 1})).task_id)
            assert [s.attempts for s in task.steps if s.protocol == "echo"] == [1]
            assert E.TASK_EVENT_TYPE_STEP_RETRYING not in {e.type for e in await events(client, task.task_id)}
        finally:
            await client.channel.close()
    finally:
        stop(second)


async def test_the_instances_of_a_server_killed_9_expire_within_their_ttl_and_its_plugins_exit(tmp_path):
    store = f"sqlite:///{tmp_path}/mcp.db"
    address = f"127.0.0.1:{free_port()}"
    killed = serve("--bundled-plugins", "--listen", address, "--store", store, MCP_PLUGIN_TTL_SECONDS="2")
    read_until(killed, "listening on")
    plugin_addresses = {p.address for p in await instances(address)}
    assert len(plugin_addresses) == 3
    killed.kill()
    killed.wait(timeout=10)
    deadline = time.monotonic() + 10
    while any(answers(a) for a in plugin_addresses):
        assert time.monotonic() < deadline, "a bundled plugin outlived its server"
        await asyncio.sleep(0.1)
    after = f"127.0.0.1:{free_port()}"
    survivor = serve("--listen", after, "--store", store)
    try:
        read_until(survivor, "listening on")
        deadline = time.monotonic() + 2 + 3  # the TTL, and the registry cache's refresh
        while left := [p for p in await instances(after) if p.address in plugin_addresses]:
            assert time.monotonic() < deadline, f"still listed: {[(p.manifest.name, p.address) for p in left]}"
            await asyncio.sleep(0.2)
    finally:
        stop(survivor)


async def test_an_instance_with_a_ttl_unreachable_too_long_is_dropped_and_a_static_one_stays(server_factory):
    running = await server_factory(health_probe_seconds=0.2, drop_unreachable_seconds=0.5)
    directory = running.orchestrator.directory
    with_ttl, static = spawn_plugin("protocol_plugins.basics"), spawn_plugin("protocol_plugins.basics")
    try:
        await directory.register(with_ttl.address, ttl_seconds=60)
        await directory.register(static.address)
        for proc in (with_ttl, static):
            proc.process.kill()
            proc.process.wait(timeout=10)
        async with asyncio.timeout(10):
            while with_ttl.address in {e.address for e in await directory.store.list_protocol_entries()}:
                await asyncio.sleep(0.1)
        # The prune refreshes the directory's cache right after it deletes; the loop above may look
        # in between (the dropped instance was then still listed, unreachable, among the others).
        await directory.refresh(force=True)
        listed = {p.address: p for p in await directory.listing()}
        assert with_ttl.address not in listed
        # registered by hand, without a TTL: it stays until deregistered, shown unreachable
        assert listed[static.address].health == registry_pb2.HEALTH_STATE_UNREACHABLE
        not_serving = {
            (p.manifest.name, a, registry_pb2.HealthState.Name(p.health))
            for a, p in listed.items()
            if a != static.address and p.health != registry_pb2.HEALTH_STATE_SERVING
        }
        assert not not_serving, not_serving
    finally:
        for proc in (with_ttl, static):
            if proc.process.poll() is None:
                proc.process.kill()


async def test_expired_registrations_are_deleted_from_the_store_but_a_renewed_one_stays(server_factory):
    running = await server_factory()
    directory, upkeep = running.orchestrator.directory, running.orchestrator.upkeep
    plugin = spawn_plugin("protocol_plugins.basics")
    try:
        await directory.register(plugin.address, ttl_seconds=0.3)
        stale = [e for e in await directory.store.list_protocol_entries() if e.address == plugin.address]
        await asyncio.sleep(0.5)
        await directory.register(plugin.address, ttl_seconds=60)  # renewed after it was read as expired
        assert await directory.store.remove_protocol_entries(stale) == []
        await directory.register(plugin.address, ttl_seconds=0.3)
        await asyncio.sleep(0.5)
        assert await upkeep.prune() == 1
        assert plugin.address not in {e.address for e in await directory.store.list_protocol_entries()}
    finally:
        plugin.process.kill()
        plugin.process.wait(timeout=10)
