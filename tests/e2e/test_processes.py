"""`--processes N`: several server processes on one address, as users run them (issue 30)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format

from mcp_sdk.proto import task_pb2, task_pb2_grpc, workflow_pb2, workflow_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as listed:
        return [int(p) for p in listed.read().split()]


def _server_children(pid: int) -> list[int]:
    """The children that are server processes (not their bundled plugins)."""
    return [c for c in _children(pid) if b"mcp_server" in Path(f"/proc/{c}/cmdline").read_bytes()]


def _wait_for(predicate, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_sqlite_is_refused_with_one_clear_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "mcp_server", "--processes", "2", "--store", f"sqlite:///{tmp_path}/m.db"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode != 0
    assert "--processes 2 needs a Redis store" in done.stderr


def test_two_processes_share_an_address_restart_a_dead_one_and_drain(redis_url):
    command = [sys.executable, "-m", "mcp_server", "--processes", "2", "--listen", "127.0.0.1:0", "--store", redis_url]
    process = subprocess.Popen(
        [*command, "--bundled-plugins"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert process.stdout is not None
        line = ""
        for line in process.stdout:
            if "listening on" in line:
                break
        assert "2 processes" in line, line
        address = line.split("listening on ")[1].split()[0]
        servers = _server_children(process.pid)
        assert len(servers) == 2

        def run_tasks(connections: int) -> set[str]:
            """Tasks over connections of their own; the replicas (processes) that ran them."""
            replicas = set()
            for n in range(connections):
                with grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
                    if n == 0:
                        workflow = json_format.ParseDict(
                            {"workflow_id": "two", "root": {"id": "s", "step": {"protocol": "echo"}}},
                            workflow_pb2.Workflow(),
                        )
                        workflow_pb2_grpc.WorkflowServiceStub(channel).CreateWorkflow(
                            workflow_pb2.CreateWorkflowRequest(workflow=workflow), timeout=10
                        )
                    tasks = task_pb2_grpc.TaskServiceStub(channel)
                    done = tasks.RunTask(task_pb2.SubmitTaskRequest(workflow_id="two"), timeout=30).task
                    assert done.status == task_pb2.TASK_STATUS_COMPLETED
                    for event in tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=done.task_id), timeout=10):
                        if "replica" in event.data.fields:
                            replicas.add(event.data.fields["replica"].string_value)
            return replicas

        assert len(run_tasks(16)) == 2  # the kernel hands connections to both processes

        os.kill(servers[0], signal.SIGKILL)
        _wait_for(lambda: len(_server_children(process.pid)) == 2 and servers[0] not in _server_children(process.pid))
        _wait_for(lambda: len(run_tasks(8)) >= 1)  # the address still serves, the new process joins
        assert process.poll() is None

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        for pid in _server_children(process.pid) if process.poll() is None else []:
            pytest.fail(f"process {pid} outlived the drain")
    finally:
        if process.poll() is None:
            process.kill()
