"""The SDK on its own: a fresh virtual environment with only `pip install ./sdk/python` (none of
the server's dependencies), a plugin written on it that registers with a running server and
serves a task, and a client that submits, watches and reads the result.

The environment is built once per content of sdk/python and protos/ (under .mcp/sdk-venv/), so
a second run reuses it; building it needs the package index, as any `pip install` does."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.e2e.test_server_process import free_port
from tests.support.processes import start_orchestrator

ROOT = Path(__file__).resolve().parents[2]
SDK = ROOT / "sdk" / "python"
# What `pip install ./sdk/python` may bring: the SDK, its five dependencies and what they need.
ALLOWED = {
    "mcp-sdk",
    "grpcio",
    "protobuf",
    "googleapis-common-protos",
    "grpcio-health-checking",
    "grpcio-reflection",
    "typing-extensions",
    "pip",
    "setuptools",
}
SERVER_ONLY = [
    "mcp_server",
    "protocol_plugins",
    "redis",
    "yaml",
    "cel",
    "rich",
    "prometheus_client",
    "opentelemetry",
    "tenacity",
    "pybreaker",
    "grpc_tools",
    "grpc_status",
]


def sdk_digest() -> str:
    """A digest of everything the SDK is built from (its sources, never its generated code)."""
    digest = hashlib.sha256()
    sources = [
        p
        for p in SDK.rglob("*")
        if p.is_file()
        and not {"proto", "build", "__pycache__"} & set(p.relative_to(SDK).parts)
        and ".egg-info" not in str(p)
    ]
    for path in sorted(sources + list((ROOT / "protos").rglob("*.proto"))):
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


@pytest.fixture(scope="session")
def sdk_python() -> Path:
    """The Python of a virtual environment holding only the SDK, installed from sdk/python."""
    target = ROOT / ".mcp" / "sdk-venv" / sdk_digest()
    python = target / "bin" / "python"
    if not (target / ".ready").exists():
        for old in target.parent.glob("*"):  # environments of earlier versions of the SDK
            shutil.rmtree(old, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(target)], check=True)
        installed = subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(SDK)],
            capture_output=True,
            text=True,
            cwd=target,
        )
        assert installed.returncode == 0, (
            f"pip install ./sdk/python failed:\n{installed.stdout[-3000:]}\n{installed.stderr[-3000:]}"
        )
        (target / ".ready").touch()
    return python


def run_isolated(python: Path, *args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run in the SDK's environment, away from the repository (so nothing of the server is importable by accident)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(python), *args], capture_output=True, text=True, cwd=cwd, timeout=timeout, env=env)


def test_the_sdk_installs_alone_without_any_of_the_servers_dependencies(sdk_python, tmp_path):
    listed = run_isolated(
        sdk_python, "-m", "pip", "list", "--format", "json", "--disable-pip-version-check", cwd=tmp_path
    )
    names = {entry["name"].lower().replace("_", "-") for entry in json.loads(listed.stdout)}
    assert "mcp-sdk" in names and names <= ALLOWED, (
        f"installed beyond the SDK's dependencies: {sorted(names - ALLOWED)}"
    )
    probe = (
        "import importlib.util, json, sys; print(json.dumps({m: importlib.util.find_spec(m) is not None"
        " for m in sys.argv[1:]}))"
    )
    found = json.loads(run_isolated(sdk_python, "-c", probe, *SERVER_ONLY, cwd=tmp_path).stdout)
    assert not any(found.values()), {m: f for m, f in found.items() if f}
    imported = run_isolated(
        sdk_python,
        "-c",
        "import mcp_sdk, mcp_sdk.plugin, mcp_sdk.client, mcp_sdk.sync, mcp_sdk.proto.task_pb2; print(mcp_sdk.__file__)",
        cwd=tmp_path,
    )
    assert imported.returncode == 0, imported.stderr
    assert str(ROOT / ".mcp") in imported.stdout, f"imported from {imported.stdout!r}, not the installed copy"


PLUGIN = textwrap.dedent('''
    from mcp_sdk.plugin import Context, Plugin

    plugin = Plugin("shouter")


    @plugin.protocol("shout", input_schema={"type": "object", "required": ["text"]})
    async def shout(data: dict, ctx: Context) -> dict:
        """Upper-cases `text`."""
        await ctx.progress(0.5, "halfway")
        return {"text": data["text"].upper(), "task_id": ctx.task_id}


    if __name__ == "__main__":
        plugin.main()
''')

CLIENT = textwrap.dedent("""
    import asyncio, json, sys
    from mcp_sdk import Client, McpError, SyncClient, TaskFailed

    address = sys.argv[1]
    definition = json.dumps({"workflow_id": "shout", "root": {"id": "loud", "step": {"protocol": "shout"}}})


    async def main() -> dict:
        report = {}
        async with Client(address) as client:
            for _ in range(200):  # the plugin registers itself; wait until the server lists it
                if any(p.manifest.name == "shout" for p in await client.list_protocols()):
                    break
                await asyncio.sleep(0.05)
            await client.create_workflow(definition)
            task = await client.submit("shout", {"text": "hello"})
            report["events"] = [e.sequence async for e in client.watch(task.task_id)]
            report["last_sequence"] = (await client.get(task.task_id)).last_sequence
            report["result"] = await client.result(task.task_id, timeout=30)
            report["task_id"] = task.task_id
            try:
                empty = {"workflow_id": "empty", "root": {"id": "r", "sequence": {"children": []}}}
                await client.create_workflow(empty)
            except McpError as exc:
                report["refused"] = [exc.code.name, [v.field for v in exc.violations]]
            try:
                await client.create_workflow("workflow_id: yaml\\nroot: {id: r}\\n")
            except McpError as exc:
                report["yaml"] = [exc.reason, exc.message]
            failing = await client.submit("shout", {"no_text": True})
            try:
                await client.result(failing.task_id, timeout=30)
            except TaskFailed as exc:
                report["failed"] = [exc.code.name, exc.task_id == failing.task_id]
        with SyncClient(address) as client:
            report["sync"] = client.run("shout", {"text": "sync"}, timeout=30)
        return report


    print(json.dumps(asyncio.run(main())))
""")


def test_a_plugin_and_a_client_on_the_sdk_alone_serve_and_run_a_task(sdk_python, tmp_path):
    address = f"127.0.0.1:{free_port()}"
    server = start_orchestrator(address, f"sqlite:///{tmp_path}/mcp.db", [], "sdk-alone")
    (tmp_path / "shout_plugin.py").write_text(PLUGIN)
    (tmp_path / "client.py").write_text(CLIENT)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    plugin = subprocess.Popen(
        [str(sdk_python), "shout_plugin.py", "--register", address, "--ttl", "30"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert plugin.stdout is not None
        ready = plugin.stdout.readline()
        assert ready.startswith("MCP_PLUGIN_LISTENING"), ready
        ran = run_isolated(sdk_python, "client.py", address, cwd=tmp_path)
        assert ran.returncode == 0, ran.stderr[-3000:]
        report = json.loads(ran.stdout)
        assert report["result"] == {"text": "HELLO", "task_id": report["task_id"]}
        assert report["events"] == list(range(1, report["last_sequence"] + 1))
        assert report["refused"][0] == "INVALID_ARGUMENT" and report["refused"][1]
        assert report["yaml"][0] == "MALFORMED_DEFINITION" and "mcp-sdk[yaml]" in report["yaml"][1]
        assert report["failed"] == ["INVALID_ARGUMENT", True]
        assert report["sync"]["text"] == "SYNC"
    finally:
        plugin.terminate()
        plugin.wait(timeout=10)
        server.terminate()
        server.wait(timeout=15)
