"""Processes and measurement helpers for the benchmarks."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format

from bench.baseline import ROOT, import_paths
from mcp_sdk.proto import task_pb2, task_pb2_grpc, workflow_pb2, workflow_pb2_grpc
from mcp_server.plugin_host import READY_LINE


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Proc:
    process: subprocess.Popen[str]
    address: str

    def rss_kb(self) -> int:
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def pids(self) -> dict[str, int]:
        """The process and the processes it started (a server run with --processes N), by name."""
        try:
            with open(f"/proc/{self.process.pid}/task/{self.process.pid}/children") as listed:
                children = [int(pid) for pid in listed.read().split()]
        except OSError:
            children = []
        return {"orchestrator": self.process.pid} | {f"process {i}": pid for i, pid in enumerate(children)}

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()


def start_plugin(module: str = "protocol_plugins.testkit") -> Proc:
    """A plugin of the Python SDK (it serves ExecuteMany); `module` "bench.unary_plugin": one
    written from the contract alone that serves unary Execute only; "bench/unary_plugin.js": the
    same in Node.js."""
    if module.endswith(".js"):
        command = [shutil.which("node") or "node", str(ROOT / module)]
    elif module == "bench.unary_plugin":
        command = [sys.executable, "-m", module]
    else:
        command = [sys.executable, "-m", "protocol_plugins.run", module]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.startswith(READY_LINE), line
    return Proc(process, line.split()[1])


def fresh_store(backend: str, redis_url: str) -> str:
    """A store of its own for one bench: a new key prefix on `redis_url`, or a new SQLite file."""
    if backend == "redis":
        return f"{redis_url}?prefix=bench:{uuid.uuid4().hex[:8]}:"
    return f"sqlite:///{tempfile.mkdtemp()}/bench.db"


def start_orchestrator(
    store: str,
    plugins: list[str],
    replica: str = "bench",
    code: Path | None = None,
    wrapper: Sequence[str] = (),
    log_to: str | None = None,
    **env: str,
) -> Proc:
    """Run an orchestrator process; `code` runs another checkout of the server (a baseline),
    `wrapper` is a command it runs under (valgrind, say). Its output goes to a pipe read until it
    listens, or to the file `log_to` (a long soak: a pipe nobody reads would fill and stall it)."""
    address = f"127.0.0.1:{free_port()}"
    args = [*wrapper, sys.executable, "-m", "mcp_server", "--listen", address, "--store", store]
    args += ["--replica-id", replica]
    for plugin in plugins:
        args += ["--plugin", plugin]
    environment = {**os.environ, "MCP_LIMIT_MAX_TASKS_IN_FLIGHT": "20000", "MCP_LIMIT_MAX_CONCURRENCY": "1000", **env}
    if code is not None:
        environment["PYTHONPATH"] = os.pathsep.join(
            p for p in (environment.get("PYTHONPATH", ""), *import_paths(code)) if p
        )
    if log_to is not None:
        with open(log_to, "a") as log:
            process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, text=True, env=environment, cwd=code)
        while "listening on" not in Path(log_to).read_text(errors="replace"):
            assert process.poll() is None, f"orchestrator did not start: see {log_to}"
            time.sleep(0.05)
        return Proc(process, address)
    process = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment, cwd=code
    )
    assert process.stdout is not None
    for line in process.stdout:
        if "listening on" in line:
            break
    assert process.poll() is None, "orchestrator did not start"
    return Proc(process, address)


@dataclass
class Stat:
    """Median of several runs, with the min and max of the runs."""

    runs: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    def as_dict(self) -> dict[str, Any]:
        return {"median": self.median, "min": min(self.runs), "max": max(self.runs), "runs": self.runs}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def repeat(times: int, measure: Callable[[], Awaitable[float]]) -> Stat:
    stat = Stat()
    for _ in range(times):
        stat.runs.append(await measure())
    return stat


class Orchestrated:
    """A client of one orchestrator: create workflows, run tasks to their end."""

    def __init__(self, address: str, own_connection: bool = False) -> None:
        """`own_connection`: a TCP connection of its own, not shared with this process's other
        channels to the address (gRPC shares them), so that the kernel may hand it to another
        process of a server run with --processes N."""
        options: list[tuple[str, int]] = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        if own_connection:
            options.append(("grpc.use_local_subchannel_pool", 1))
        self.channel = grpc.aio.insecure_channel(address, options=options)
        self.tasks = task_pb2_grpc.TaskServiceStub(self.channel)
        self.workflows = workflow_pb2_grpc.WorkflowServiceStub(self.channel)

    async def create(self, definition: dict[str, Any]) -> None:
        workflow = json_format.ParseDict(definition, workflow_pb2.Workflow())
        await self.workflows.CreateWorkflow(workflow_pb2.CreateWorkflowRequest(workflow=workflow))

    async def run(self, workflow_id: str, data: dict[str, Any] | None = None, read: str = "watch") -> float:
        """Seconds from submit to the end of the task, read by `read`: "watch" (SubmitTask, then
        WatchTask), "events" (SubmitTask, then WatchTaskEvents), "submit-watch" (one
        SubmitAndWatchTask stream) or "run" (one RunTask call, answered with the finished task)."""
        started = time.perf_counter()
        request = task_pb2.SubmitTaskRequest(workflow_id=workflow_id)
        if data:
            request.input_data.update(data)
        if read == "run":
            finished = (await self.tasks.RunTask(request)).task
            assert finished.status == task_pb2.TASK_STATUS_COMPLETED, finished
            return time.perf_counter() - started
        if read == "submit-watch":
            async for reply in self.tasks.SubmitAndWatchTask(request):
                if reply.events:
                    last = reply.events[-1]
        else:
            task = (await self.tasks.SubmitTask(request)).task
            watch = task_pb2.WatchTaskRequest(task_id=task.task_id)
            if read == "events":
                async for message in self.tasks.WatchTaskEvents(watch):
                    last = message.events[-1]
            else:
                async for event in self.tasks.WatchTask(watch):
                    last = event
        elapsed = time.perf_counter() - started
        assert last.type == task_pb2.TASK_EVENT_TYPE_COMPLETED, last
        return elapsed

    async def close(self) -> None:
        await self.channel.close()


def chain(workflow_id: str, steps: int, protocol: str = "echo", expr: str = "") -> dict[str, Any]:
    children = [
        {"id": f"s{i}", "step": {"protocol": protocol, **({"input": expr} if expr else {})}} for i in range(steps)
    ]
    return {"workflow_id": workflow_id, "root": {"id": "root", "sequence": {"children": children}}}


async def throughput(run_one: Callable[[], Awaitable[Any]], in_flight: int, total: int) -> float:
    """Completions per second with `in_flight` concurrent runners doing `total` runs."""
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await run_one()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return total / (time.perf_counter() - started)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds used by a set of processes between start() and stop()."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.before: list[float] = []

    def start(self) -> None:
        self.before = [cpu_seconds(p) for p in self.pids]

    def stop(self) -> list[float]:
        return [cpu_seconds(p) - b for p, b in zip(self.pids, self.before)]


def start_thin(plugin: str, redis_url: str, listen: str = "127.0.0.1:0") -> Proc:
    """The thinnest orchestrator (bench/thin.py) as its own process; give the `listen` address of
    one already started to start another on the same port."""
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.thin", "--plugin", plugin, "--redis", redis_url, "--listen", listen],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.startswith("THIN_LISTENING"), line
    return Proc(process, line.split()[1])
