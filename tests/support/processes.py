"""Orchestrators as real processes for the end-to-end tests, their output kept in a file (a pipe
nobody reads would fill up and stall the server)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.conftest import Client


def start_orchestrator(
    address: str, store: str, plugins: Sequence[str], replica: str, **env: str
) -> subprocess.Popen[bytes]:
    """`python -m mcp_server` on `address`, with `plugins` registered; returns once it serves."""
    log = tempfile.NamedTemporaryFile(prefix=f"orchestrator-{replica}-", suffix=".log", delete=False)  # noqa: SIM115
    args = [sys.executable, "-m", "mcp_server", "--listen", address, "--store", store, "--replica-id", replica]
    for plugin in plugins:
        args += ["--plugin", plugin]
    process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with open(log.name, errors="replace") as output:
            if "listening on" in output.read():
                return process
        if process.poll() is not None:
            break
        time.sleep(0.05)
    process.kill()
    with open(log.name, errors="replace") as output:
        raise RuntimeError(f"orchestrator {replica} did not start:\n{output.read()[-3000:]}")


@contextlib.asynccontextmanager
async def replica_set(
    count: int, store: str, plugins: Sequence[str], name: str, **env: str
) -> AsyncIterator[tuple[list[subprocess.Popen[bytes]], list[Client]]]:
    """`count` orchestrator processes on one store (replica ids `name0`, `name1`, ...), with a
    client for each; all stopped afterwards."""
    from tests.conftest import client_for_address
    from tests.e2e.test_server_process import free_port

    addresses = [f"127.0.0.1:{free_port()}" for _ in range(count)]
    replicas = [start_orchestrator(a, store, plugins, f"{name}{i}", **env) for i, a in enumerate(addresses)]
    clients = [client_for_address(a) for a in addresses]
    try:
        yield replicas, clients
    finally:
        for client in clients:
            await client.channel.close()
        for process in replicas:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:  # stuck where SIGTERM cannot reach it
                    process.kill()
                    process.wait()
