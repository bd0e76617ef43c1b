"""Orchestrators as real processes for the end-to-end tests, their output kept in a file (a pipe
nobody reads would fill up and stall the server)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence


def start_orchestrator(address: str, store: str, plugins: Sequence[str], replica: str, **env: str) -> subprocess.Popen[bytes]:
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
