"""The llm plugin as a process, pointed at a model server (the scripted one, or a real one)."""

from __future__ import annotations

import os
import subprocess
import sys

from mcp_server.plugin_host import READY_LINE


def spawn_llm_plugin(base_url: str, model: str = "", api_key: str = "test") -> tuple[subprocess.Popen[str], str]:
    """Start `protocol_plugins.llm` on a free port; the process and its address."""
    env = {**os.environ, "MCP_LLM_BASE_URL": base_url, "MCP_LLM_MODEL": model, "MCP_LLM_API_KEY": api_key}
    plugin = subprocess.Popen(
        [sys.executable, "-m", "protocol_plugins.run", "protocol_plugins.llm", "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert plugin.stdout is not None
    line = plugin.stdout.readline()
    if not line.startswith(READY_LINE):
        plugin.kill()
        raise RuntimeError(f"the llm plugin did not start: {line!r}")
    return plugin, line.split()[1]
