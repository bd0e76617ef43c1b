"""Build and run the orchestrator's gRPC server: the four services, health, reflection.

SIGTERM and SIGINT stop accepting new RPCs, give in-flight ones `shutdown_grace` seconds,
stop the dispatcher (tasks still running are left to resume), then close the store.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, cast

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from mcp_sdk.client import Tls
from mcp_sdk.proto import (
    bulk_pb2,
    bulk_pb2_grpc,
    events_pb2,
    events_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
    schedule_pb2,
    schedule_pb2_grpc,
    task_pb2,
    task_pb2_grpc,
    workflow_pb2,
    workflow_pb2_grpc,
)
from mcp_sdk.serving import pending_call_options
from mcp_server.api.bulk import BulkActionServicer
from mcp_server.api.events import EventServicer
from mcp_server.api.interceptor import EdgeInterceptor
from mcp_server.api.registry import RegistryServicer
from mcp_server.api.schedules import ScheduleServicer
from mcp_server.api.tasks import TaskServicer
from mcp_server.api.workflows import WorkflowServicer
from mcp_server.auth import Authenticator
from mcp_server.console.app import RunningConsole, start_console
from mcp_server.errors import McpError, StartupError
from mcp_server.orchestrator import Orchestrator
from mcp_server.plugin_host import PluginProcess, bundled_modules, start_plugin
from mcp_server.processes import ProcessGroup, refusal
from mcp_server.settings import Settings
from mcp_server.shutdown import stop_requested
from mcp_server.state import describe_store, open_store
from mcp_server.telemetry.logs import configure as configure_logging
from mcp_server.telemetry.tracing import TaskTracer, provider_for
from mcp_server.tls import server_credentials

log = logging.getLogger(__name__)
SERVICES = (
    task_pb2.DESCRIPTOR.services_by_name["TaskService"].full_name,
    workflow_pb2.DESCRIPTOR.services_by_name["WorkflowService"].full_name,
    registry_pb2.DESCRIPTOR.services_by_name["ProtocolRegistry"].full_name,
    schedule_pb2.DESCRIPTOR.services_by_name["ScheduleService"].full_name,
    bulk_pb2.DESCRIPTOR.services_by_name["BulkActionService"].full_name,
    events_pb2.DESCRIPTOR.services_by_name["EventService"].full_name,
)


@dataclass
class RunningServer:
    """A started orchestrator: its gRPC server, its domain, the plugins it started."""

    server: grpc.aio.Server
    orchestrator: Orchestrator
    address: str
    health: health.aio.HealthServicer
    plugins: list[PluginProcess] = field(default_factory=list)
    health_task: asyncio.Task[None] | None = None
    console: RunningConsole | None = None

    async def stop(self, grace: float | None = None) -> None:
        """Stop serving, then the dispatcher, the store and the plugins. Each stage has a time
        limit, so shutdown always ends; a stage that overruns is logged and skipped."""
        grace = self.orchestrator.settings.shutdown_grace if grace is None else grace
        if self.health_task is not None:
            self.health_task.cancel()
        if self.console is not None:
            await _bounded_stage("console", self.console.stop(), 5)
        for name in ("", *SERVICES):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await _bounded_stage("gRPC server", self.server.stop(grace), grace + 5)
        await _bounded_stage("dispatcher", self.orchestrator.stop(), grace + 10)
        await _bounded_stage("store", self.orchestrator.store.close(), 5)
        for plugin in self.plugins:
            await _bounded_stage(f"plugin {plugin.module}", plugin.stop(), 10)


async def _bounded_stage(name: str, stage: Awaitable[Any], seconds: float) -> None:
    try:
        async with asyncio.timeout(seconds):
            await stage
    except TimeoutError:
        log.error("shutdown: %s did not stop within %.0f s; going on without it", name, seconds)
        for task in asyncio.all_tasks():  # what it may be waiting for, for whoever reads the log
            frames = task.get_stack(limit=3)
            where = " <- ".join(f"{f.f_code.co_name} ({f.f_code.co_filename}:{f.f_lineno})" for f in frames)
            log.error("shutdown: still running: %s: %s", task.get_name(), where or "no frames")


async def start_server(settings: Settings, tracer: TaskTracer | None = None) -> RunningServer:
    """Open the store, start plugins if asked, serve, and register the plugin addresses.
    `tracer` overrides the one `settings.tracing` would build (tests pass an in-memory one)."""
    store = await open_store(settings.store_url, settings.retention_seconds)
    if tracer is None and settings.tracing:
        tracer = TaskTracer(provider_for(settings.tracing, f"mcp-server/{settings.replica_id}"))
    orchestrator = Orchestrator(settings, store, tracer)
    limits = settings.limits
    server = grpc.aio.server(
        interceptors=[EdgeInterceptor(Authenticator.from_file(settings.auth_file) if settings.auth_file else None)],
        options=[
            ("grpc.max_receive_message_length", limits.max_message_bytes),
            ("grpc.max_send_message_length", limits.max_message_bytes),
            # the SDK pings a quiet watch every 30 s to notice a dead network; welcome that
            ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
            *pending_call_options(settings.max_pending_calls),
            # an address in use is an error, but for the processes of one group (processes.py)
            ("grpc.so_reuseport", 1 if settings.reuse_port else 0),
        ],
    )
    task_pb2_grpc.add_TaskServiceServicer_to_server(TaskServicer(orchestrator), server)
    workflow_pb2_grpc.add_WorkflowServiceServicer_to_server(WorkflowServicer(orchestrator), server)
    registry_pb2_grpc.add_ProtocolRegistryServicer_to_server(RegistryServicer(orchestrator), server)
    schedule_pb2_grpc.add_ScheduleServiceServicer_to_server(ScheduleServicer(orchestrator), server)
    bulk_pb2_grpc.add_BulkActionServiceServicer_to_server(BulkActionServicer(orchestrator), server)
    events_pb2_grpc.add_EventServiceServicer_to_server(EventServicer(orchestrator), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((*SERVICES, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    credentials = server_credentials(settings)
    try:
        port = (
            server.add_secure_port(settings.listen, credentials)
            if credentials
            else server.add_insecure_port(settings.listen)
        )
    except RuntimeError:  # grpcio raises where older releases returned 0
        port = 0
    if port == 0:
        await store.close()
        raise StartupError(f"cannot listen on {settings.listen}: the address is in use or not this machine's")
    address = f"{settings.listen.rsplit(':', 1)[0]}:{port}"
    await server.start()
    running = RunningServer(server, orchestrator, address, health_servicer)
    try:
        await _start_plugins_and_dispatch(running, settings)
    except BaseException:
        await running.stop(0)  # a server that cannot start leaves nothing behind
        raise
    for name in ("", *SERVICES):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("mCP orchestrator serving on %s (store: %s)", address, describe_store(settings.store_url))
    return running


async def _start_plugins_and_dispatch(running: RunningServer, settings: Settings) -> None:
    if settings.bundled_plugins:
        running.plugins = list(await asyncio.gather(*(start_plugin(m) for m in bundled_modules())))
    bundled = [p.address for p in running.plugins]
    for line in await running.orchestrator.upkeep.register_own(bundled, settings.plugins):
        log.info(line)
    await running.orchestrator.start()
    if settings.metrics_port:
        running.orchestrator.metrics.serve(settings.metrics_port, settings.metrics_address)
    running.health_task = asyncio.create_task(_report_health(running))
    if settings.console_listen:
        running.console = await start_console(
            _loopback(running.address), settings.console_listen, tls=_console_tls(settings)
        )


def _loopback(address: str) -> str:
    """Where a client on this machine reaches a server listening on `address` (0.0.0.0 included)."""
    host, _, port = address.rpartition(":")
    return f"127.0.0.1:{port}" if host in ("0.0.0.0", "[::]", "::", "") else address


def _console_tls(settings: Settings) -> Tls | None:
    """How the in-process console reaches a server that serves TLS: trusting console_tls_ca, or the
    server's certificate itself (which works for a self-signed one); the certificate must name
    127.0.0.1. A server that requires client certificates needs the console run apart, with its
    own: `mcp console --server ...`."""
    if not settings.tls_cert:
        return None
    if settings.tls_client_ca:
        raise ValueError(
            "the in-process console cannot present a client certificate to a server that requires one (mTLS): "
            "run it apart with `mcp console --server ADDRESS --tls-ca CA`"
        )
    return Tls.from_files(ca=settings.console_tls_ca or settings.tls_cert)


async def _report_health(running: RunningServer, interval: float = 1.0) -> None:
    """Health means the store answers: every service turns NOT_SERVING while it does not."""
    serving: bool | None = None
    while True:
        try:
            await running.orchestrator.store.ping()
            ok = True
        except McpError:
            ok = False
        if ok != serving:
            status = health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
            for name in ("", *SERVICES):
                await running.health.set(name, status)
            if serving is not None:
                log.warning(
                    "store %s: health is now %s", "back" if ok else "unreachable", "SERVING" if ok else "NOT_SERVING"
                )
            serving = ok
        await asyncio.sleep(interval)


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then shut down cleanly."""
    stop = stop_requested()  # a signal during start-up stops the server as soon as it is up
    running = await start_server(settings)
    tune_collector(settings)  # the process's own objects, not in start_server: tests run many servers in one process
    loop = "uvloop" if type(asyncio.get_running_loop()).__module__.startswith("uvloop") else "asyncio"
    where = f"store: {describe_store(settings.store_url)}, event loop: {loop}"
    print(f"mCP orchestrator listening on {running.address} ({where})", flush=True)
    if running.console is not None:
        print(f"mCP console on {running.console.url}", flush=True)
    await stop.wait()
    log.info("shutting down")
    await running.stop()


def tune_collector(settings: Settings) -> None:
    """Freeze what the started server holds out of the cycle collector's way (Settings.gc_freeze):
    a full collection walked every object of the process, 40-50 ms on this machine during which
    no task moves, and cost 11-15% of the CPU of a 100-branch fan-out."""
    if settings.gc_freeze:
        gc.collect()
        gc.freeze()


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop the server runs on (Settings.event_loop): uvloop's when asked for and
    installed (it is a dependency where it builds), else the standard library's."""
    if name == "uvloop":
        try:
            import uvloop
        except ImportError:
            logging.getLogger(__name__).warning("uvloop is not installed: the server runs on asyncio's event loop")
            return None
        return cast(Callable[[], asyncio.AbstractEventLoop], uvloop.new_event_loop)
    return None


def main(argv: list[str] | None = None) -> None:
    from mcp_server.settings import SettingsError, settings_from

    try:
        settings = settings_from(argv)
    except SettingsError as exc:
        raise SystemExit(f"mcp-server: cannot start: {exc}") from None
    configure_logging(settings.log_format)
    if settings.processes > 1:
        if reason := refusal(settings):
            raise SystemExit(f"mcp-server: cannot start: {reason}")
        runner: Coroutine[Any, Any, None] = ProcessGroup(settings, argv or []).run()
    else:
        runner = serve(settings)
    try:
        with asyncio.Runner(loop_factory=loop_factory(settings.event_loop)) as loop:
            loop.run(runner)
    except (StartupError, McpError) as exc:  # a store it cannot open, an address it cannot take: one line
        raise SystemExit(f"mcp-server: cannot start: {exc}") from None
