"""Settings from the environment and flags: what cannot be used stops the server before it
starts, naming the variable and why; what can is taken as given."""

from __future__ import annotations

import os
import subprocess
import sys

import grpc
import pytest

from mcp_sdk.proto import protocol_pb2, protocol_pb2_grpc
from mcp_server.settings import SettingsError, settings_from


def test_environment_and_flags_are_read_with_their_types():
    settings = settings_from(
        ["--listen", "127.0.0.1:7000"],
        {
            "MCP_LEASE_SECONDS": "2.5",
            "MCP_MAX_PENDING_CALLS": "500",
            "MCP_LIMIT_MAX_PAGE_SIZE": "50",
            "MCP_LIMIT_MAX_TASKS_IN_FLIGHT": "0",
            "MCP_GC_FREEZE": "off",
        },
    )
    assert (settings.listen, settings.lease_seconds, settings.max_pending_calls) == ("127.0.0.1:7000", 2.5, 500)
    assert settings.limits.max_page_size == 50 and settings.limits.max_tasks_in_flight == 0  # an API-only replica
    assert settings.gc_freeze is False


@pytest.mark.parametrize(
    ("env", "said"),
    [
        ({"MCP_LEASE_SECONDS": "-1"}, "MCP_LEASE_SECONDS=-1.0: must be above zero"),
        ({"MCP_LEASE_SECONDS": "0"}, "MCP_LEASE_SECONDS=0.0: must be above zero"),
        ({"MCP_SIGNAL_POLL_SECONDS": "0"}, "MCP_SIGNAL_POLL_SECONDS=0.0: must be above zero"),
        ({"MCP_SHUTDOWN_GRACE": "-3"}, "MCP_SHUTDOWN_GRACE=-3.0: must not be negative"),
        ({"MCP_MAX_PENDING_CALLS": "lots"}, "MCP_MAX_PENDING_CALLS='lots': must be a whole number"),
        ({"MCP_BREAKER_RESET_SECONDS": "soon"}, "MCP_BREAKER_RESET_SECONDS='soon': must be a number"),
        ({"MCP_LIMIT_MAX_PAGE_SIZE": "0"}, "MCP_LIMIT_MAX_PAGE_SIZE=0: must be above zero"),
        ({"MCP_LIMIT_SUBMISSIONS_PER_SECOND": "-2"}, "MCP_LIMIT_SUBMISSIONS_PER_SECOND=-2.0: must not be negative"),
        ({"MCP_METRICS_PORT": "70000"}, "MCP_METRICS_PORT=70000: must be a port"),
        ({"MCP_CAPACITY_SLICE_UNITS": "0"}, "MCP_CAPACITY_SLICE_UNITS=0: must be above zero"),
        ({"MCP_PROTOCOL_CONCURRENCY": "render"}, "'render' must look like name=N"),
        ({"MCP_LIMIT_MAX_EVENT_BYTES": "1000"}, "MCP_LIMIT_MAX_EVENT_BYTES=1000: must be at least 65536"),
        ({"MCP_LIMIT_CHUNKED_VALUE_BYTES": "4096"}, "MCP_LIMIT_CHUNKED_VALUE_BYTES=4096: must be 0 (values whole)"),
        ({"MCP_EVENT_LOOP": "tokio"}, "MCP_EVENT_LOOP='tokio': must be one of uvloop, asyncio"),
        ({"MCP_LIMIT_MAX_QUEUED_BYTES_PER_OWNER": "-1"}, "MCP_LIMIT_MAX_QUEUED_BYTES_PER_OWNER=-1: must not be"),
        (
            {"MCP_LIMIT_MAX_EVENT_BYTES": "3000000"},
            "MCP_LIMIT_MAX_EVENT_BYTES=3000000: must be at most half of MCP_LIMIT_MAX_MESSAGE_BYTES (4194304)",
        ),
    ],
)
def test_a_setting_that_cannot_be_used_is_named_with_the_reason(env, said):
    with pytest.raises(SettingsError) as raised:
        settings_from([], env)
    assert said in str(raised.value)


@pytest.mark.parametrize(
    "name",
    [
        "MAX_CEL_COST",
        "MAX_SIGNAL_BYTES_PER_TASK",
        "MAX_QUEUED_PER_OWNER",
        "MAX_QUEUED_BYTES_PER_OWNER",
        "SUBMISSIONS_PER_SECOND",
        "CHUNKED_VALUE_BYTES",
    ],
)
def test_a_limit_documented_as_off_at_zero_can_be_set_to_zero(name):
    # each says "0: no limit" (or no budget) in settings.py and the docs; the server must start so
    settings = settings_from([], {f"MCP_LIMIT_{name}": "0"})
    assert getattr(settings.limits, name.lower()) == 0


def test_every_unusable_setting_is_named_at_once():
    with pytest.raises(SettingsError) as raised:
        settings_from([], {"MCP_LEASE_SECONDS": "0", "MCP_LIMIT_MAX_QUEUE_LENGTH": "-5"})
    assert "MCP_LEASE_SECONDS" in str(raised.value) and "MCP_LIMIT_MAX_QUEUE_LENGTH" in str(raised.value)


def test_the_server_process_refuses_to_start_with_one_line_saying_why():
    result = subprocess.run(
        [sys.executable, "-m", "mcp_server", "--listen", "127.0.0.1:0", "--store", "sqlite://:memory:"],
        env={"MCP_LEASE_SECONDS": "-1", "PATH": ""},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert result.stderr.strip() == "mcp-server: cannot start: MCP_LEASE_SECONDS=-1.0: must be above zero"


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_the_server_process_runs_on_the_event_loop_it_is_given(loop):
    """uvloop by default (installed with the server), asyncio's when asked; the line that says the
    server listens names it, and no line of gRPC's about forks comes with the plugins it starts."""
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mcp_server",
            "--listen",
            "127.0.0.1:0",
            "--store",
            "sqlite://:memory:",
            "--bundled-plugins",
        ],
        env={**os.environ, "MCP_EVENT_LOOP": loop},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert server.stdout is not None
        said = []
        for line in server.stdout:
            said.append(line)
            if "listening on" in line:
                break
        assert f"event loop: {loop})" in said[-1], said
        assert not any("fork" in line for line in said), said
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_an_sdk_plugin_process_serves_on_the_event_loop_it_is_given(loop):
    """Plugin.main reads MCP_EVENT_LOOP as the server does (uvloop by default, when installed),
    says which loop it serves on, and answers on it."""
    plugin = subprocess.Popen(
        [sys.executable, "-m", "protocol_plugins.run", "protocol_plugins.basics"],
        env={**os.environ, "MCP_EVENT_LOOP": loop},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert plugin.stdout is not None and plugin.stderr is not None
        address = plugin.stdout.readline().split()[1]
        said = plugin.stderr.readline()
        assert f"on {address} (event loop: {loop})" in said, said
        with grpc.insecure_channel(address) as channel:
            described = protocol_pb2_grpc.ProtocolServiceStub(channel).Describe(protocol_pb2.DescribeRequest())
        assert described.protocols
    finally:
        plugin.terminate()
        plugin.wait(timeout=30)


def test_an_sdk_plugin_refuses_an_unknown_event_loop():
    done = subprocess.run(
        [sys.executable, "-m", "protocol_plugins.run", "protocol_plugins.basics"],
        env={**os.environ, "MCP_EVENT_LOOP": "tokio"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and "MCP_EVENT_LOOP must be one of uvloop, asyncio" in done.stderr
