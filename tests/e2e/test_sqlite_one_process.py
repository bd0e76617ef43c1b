"""The SQLite store serves one process: a second server on the same file is refused at start
(it took over the first's running tasks while the first still ran them), and the file is free
again the moment its process dies, kill -9 included."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mcp_server.errors import StartupError
from mcp_server.state import open_store
from tests.e2e.test_server_process import free_port
from tests.support.processes import start_orchestrator


def test_a_second_server_on_one_sqlite_file_is_refused_and_kill_9_frees_the_file(tmp_path):
    store = f"sqlite:///{tmp_path}/one.db"
    first = start_orchestrator(f"127.0.0.1:{free_port()}", store, [], "first")
    again = None
    try:
        second = subprocess.run(
            [sys.executable, "-m", "mcp_server", "--listen", f"127.0.0.1:{free_port()}", "--store", store],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode != 0
        said = second.stdout + second.stderr
        assert f"is in use by another server process (pid {first.pid})" in said, said
        assert "use a Redis store" in said
        first.kill()
        first.wait(timeout=10)
        again = start_orchestrator(f"127.0.0.1:{free_port()}", store, [], "again")  # nothing stale left
    finally:
        for process in (first, again):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(timeout=10)


@pytest.mark.asyncio
async def test_a_second_open_of_one_sqlite_file_in_a_process_is_refused_until_the_first_closes(tmp_path):
    url = f"sqlite:///{tmp_path}/one.db"
    first = await open_store(url)
    with pytest.raises(StartupError, match="in use by another server process"):
        await open_store(url)
    await first.close()
    await (await open_store(url)).close()
