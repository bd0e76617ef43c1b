"""The plugin SDK: write a protocol as a function, serve it as a ProtocolService.

    from mcp_sdk.plugin import Context, Plugin

    plugin = Plugin("greeter")

    @plugin.protocol("greet", description="Says hello")
    async def greet(data: dict, ctx: Context) -> dict:
        return {"greeting": f"hello {data.get('name', 'world')}"}

    if __name__ == "__main__":
        plugin.main()          # --listen, --register ORCHESTRATOR, --ttl, --capacity gpus=1, TLS

A handler receives the input as a dict and returns a dict (the output) or a `Reply` with a
directive (`accept`, `retry`, `fail`, `goto`; handlers.py). Raising ProtocolError answers with that gRPC
code; any other exception answers INTERNAL with its message: the step fails, the plugin and
the orchestrator stay up. The server serves health and reflection too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import functools
import inspect
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from mcp_sdk.call_streams import CallStream
from mcp_sdk.connection import Tls
from mcp_sdk.handlers import Context, Handler, ProtocolError, Reply, accept, fail, goto, retry
from mcp_sdk.proto import protocol_pb2, protocol_pb2_grpc
from mcp_sdk.registration import keep_registered
from mcp_sdk.serving import DEFAULT_MAX_PENDING_CALLS, pending_call_options
from mcp_sdk.values import dict_to_struct, sendable_struct, struct_to_dict

__all__ = ["READY_LINE", "Context", "Handler", "Plugin", "ProtocolError", "Reply", "accept", "fail", "goto", "retry"]
log = logging.getLogger(__name__)
READY_LINE = "MCP_PLUGIN_LISTENING"
DEFAULT_HANDLER_THREADS = 64


@dataclass
class _Registered:
    manifest: protocol_pb2.ProtocolManifest
    handler: Handler
    # a plain function runs in a worker thread, so that while it computes the plugin still
    # answers health checks, Describe and its other calls; `async def` runs on the event loop
    blocking: bool


def parse_capacity(text: str) -> protocol_pb2.Capacity:
    """`gpus=1,cpu_millis=4000,memory_mb=8192` as a Capacity; raises ValueError naming what is wrong."""
    capacity = protocol_pb2.Capacity()
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, amount = item.partition("=")
        if name not in ("cpu_millis", "memory_mb", "gpus"):
            raise ValueError(f"unknown resource {name!r}: use cpu_millis, memory_mb or gpus")
        if not amount.isdigit():
            raise ValueError(f"{name} must be a whole number of at least 0, not {amount!r}")
        setattr(capacity, name, int(amount))
    return capacity


def _capacity_argument(text: str) -> protocol_pb2.Capacity:
    try:
        return parse_capacity(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class Plugin(protocol_pb2_grpc.ProtocolServiceServicer):
    """A set of protocols served together as one ProtocolService.

    `capacity` is what this instance offers to all the calls it runs at once (cpu_millis,
    memory_mb, gpus; unset or 0 means unlimited): the orchestrator starts a call here only when
    what is left covers the call's needs (declared per protocol)."""

    # serve ExecuteMany (many calls over one stream); without it the orchestrator uses Execute
    call_streams = True
    # calls received and waiting for the event loop before gRPC sheds any (see mcp_sdk.serving)
    max_pending_calls = DEFAULT_MAX_PENDING_CALLS
    # plain (blocking) handlers running at once: their own pool, since asyncio's default one has
    # min(32, cores + 4) threads, which held a 2-core plugin to 6 calls of a handler that waits on
    # a model's HTTP API however many the orchestrator sent
    handler_threads = DEFAULT_HANDLER_THREADS

    def __init__(self, name: str, capacity: protocol_pb2.Capacity | dict[str, int] | None = None) -> None:
        self.name = name
        self.protocols: dict[str, _Registered] = {}
        self._threads: ThreadPoolExecutor | None = None
        self.capacity = (
            capacity if isinstance(capacity, protocol_pb2.Capacity) else protocol_pb2.Capacity(**(capacity or {}))
        )

    def protocol(
        self,
        name: str,
        *,
        description: str = "",
        version: str = "1.0.0",
        type: protocol_pb2.ProtocolType = protocol_pb2.PROTOCOL_TYPE_TRANSFORM,
        max_concurrency: int = 0,
        dependencies: tuple[str, ...] = (),
        input_schema: dict[str, Any] | None = None,
        output_schema: dict[str, Any] | None = None,
        cpu_millis: int = 0,
        memory_mb: int = 0,
        gpu: bool = False,
        gpus: int = 0,
    ) -> Callable[[Handler], Handler]:
        """Register the decorated function as protocol `name`, with its manifest: version, type,
        description (default: the docstring's first line), dependencies, what one call needs
        (`cpu_millis`, `memory_mb`, `gpus`; the orchestrator admits a call only where they are
        free), the calls it accepts at once (`max_concurrency`, which the orchestrator honours)
        and JSON Schemas of its input and output."""

        def register(handler: Handler) -> Handler:
            manifest = protocol_pb2.ProtocolManifest(
                name=name,
                version=version,
                type=type,
                description=description or (inspect.getdoc(handler) or "").split("\n")[0],
                dependencies=list(dependencies),
                max_concurrency=max_concurrency,
                resources=protocol_pb2.ResourceRequirements(
                    cpu_millis=cpu_millis, memory_mb=memory_mb, gpu=gpu, gpus=gpus
                ),
            )
            if input_schema:
                manifest.input_schema.CopyFrom(dict_to_struct(input_schema))
            if output_schema:
                manifest.output_schema.CopyFrom(dict_to_struct(output_schema))
            blocking = not inspect.iscoroutinefunction(handler)
            self.protocols[name] = _Registered(manifest, handler, blocking)
            return handler

        return register

    # ---- ProtocolService ------------------------------------------------------------------
    async def Describe(
        self, request: protocol_pb2.DescribeRequest, context: grpc.aio.ServicerContext
    ) -> protocol_pb2.DescribeResponse:
        return protocol_pb2.DescribeResponse(
            protocols=[p.manifest for p in self.protocols.values()], capacity=self.capacity
        )

    async def Execute(
        self, request: protocol_pb2.ExecuteRequest, context: grpc.aio.ServicerContext
    ) -> protocol_pb2.ExecuteResponse:
        try:
            return await self._answer(request, Context(request, context))
        except ProtocolError as exc:
            await context.abort(exc.code, exc.message, exc.trailing_metadata())
            raise AssertionError("unreachable") from None

    async def ExecuteMany(
        self, requests: AsyncIterator[protocol_pb2.ExecuteManyRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[protocol_pb2.ExecuteManyResponse]:
        """Many Execute calls over one stream (see protocol.proto): each runs as its own task and
        its outcome goes back with the others ready at the same time."""
        async with CallStream(self._answer, context) as calls:
            reader = asyncio.ensure_future(calls.read(requests))
            try:
                while True:
                    batch = await calls.outcomes(reader)
                    if batch is None:
                        return
                    yield batch
            finally:
                reader.cancel()

    async def ExecuteStream(
        self, request: protocol_pb2.ExecuteRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[protocol_pb2.ExecuteStreamResponse]:
        queue: asyncio.Queue[protocol_pb2.Progress] = asyncio.Queue()
        work = asyncio.ensure_future(self._answer(request, Context(request, context, queue)))
        try:
            while not work.done() or not queue.empty():
                getter = asyncio.ensure_future(queue.get())
                await asyncio.wait({work, getter}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    yield protocol_pb2.ExecuteStreamResponse(progress=getter.result())
                else:
                    getter.cancel()
            yield protocol_pb2.ExecuteStreamResponse(result=await work)
        except ProtocolError as exc:
            await context.abort(exc.code, exc.message, exc.trailing_metadata())
        finally:
            work.cancel()

    async def _answer(self, request: protocol_pb2.ExecuteRequest, ctx: Context) -> protocol_pb2.ExecuteResponse:
        """Run the handler of `request`; raise ProtocolError with the status the call ends with."""
        registered = self.protocols.get(request.protocol)
        if registered is None:
            raise ProtocolError(grpc.StatusCode.NOT_FOUND, f"{self.name} does not host protocol {request.protocol!r}")
        try:
            data = struct_to_dict(request.input)
            if registered.blocking:
                result = await self._in_thread(registered.handler, data, ctx)
            else:
                result = registered.handler(data, ctx)
            if inspect.isawaitable(result):
                result = await result
        except (ValueError, KeyError, TypeError) as exc:
            raise ProtocolError(
                grpc.StatusCode.INVALID_ARGUMENT, f"{request.protocol}: bad input: {exc}", usage=ctx.usage
            ) from None
        except ProtocolError as exc:
            if ctx.usage and not exc.usage:  # what the call used before it failed goes with the error
                exc.usage = dict(ctx.usage)
            raise
        reply = result if isinstance(result, Reply) else Reply(result)
        if not isinstance(reply.output, dict):
            raise ProtocolError(
                grpc.StatusCode.INTERNAL, f"{request.protocol} returned {type(reply.output).__name__}, not an object"
            )
        try:
            response = protocol_pb2.ExecuteResponse(output=sendable_struct(reply.output))
        except ValueError as exc:  # nested too deeply to send: the step fails, the plugin stays up
            raise ProtocolError(
                grpc.StatusCode.INTERNAL, f"{request.protocol} returned an output that cannot be sent: {exc}"
            ) from None
        if reply.directive is not None:
            response.directive.CopyFrom(reply.directive)
        if ctx.usage:
            response.usage.update(ctx.usage)
        return response

    # ---- serving --------------------------------------------------------------------------
    async def _in_thread(self, handler: Handler, data: dict[str, Any], ctx: Context) -> Any:
        """Run a plain handler in the plugin's handler threads (with the caller's context vars)."""
        if self._threads is None:
            self._threads = ThreadPoolExecutor(self.handler_threads, thread_name_prefix=f"{self.name}-handler")
        run = functools.partial(contextvars.copy_context().run, handler, data, ctx)
        return await asyncio.get_running_loop().run_in_executor(self._threads, run)

    def serialize_execute_response(self, response: Any) -> bytes:
        """How Execute's answer goes on the wire (the chaos plugin overrides it to send garbage)."""
        return bytes(response.SerializeToString())

    def _handlers(self) -> grpc.GenericRpcHandler:
        p = protocol_pb2
        return grpc.method_handlers_generic_handler(
            "mcp.v1.ProtocolService",
            {
                "Describe": grpc.unary_unary_rpc_method_handler(
                    self.Describe,
                    request_deserializer=p.DescribeRequest.FromString,
                    response_serializer=p.DescribeResponse.SerializeToString,
                ),
                "Execute": grpc.unary_unary_rpc_method_handler(
                    self.Execute,
                    request_deserializer=p.ExecuteRequest.FromString,
                    response_serializer=self.serialize_execute_response,
                ),
                "ExecuteStream": grpc.unary_stream_rpc_method_handler(
                    self.ExecuteStream,
                    request_deserializer=p.ExecuteRequest.FromString,
                    response_serializer=p.ExecuteStreamResponse.SerializeToString,
                ),
                **(
                    {
                        "ExecuteMany": grpc.stream_stream_rpc_method_handler(
                            self.ExecuteMany,
                            request_deserializer=p.ExecuteManyRequest.FromString,
                            response_serializer=p.ExecuteManyResponse.SerializeToString,
                        )
                    }
                    if self.call_streams
                    else {}
                ),
            },
        )

    async def start(
        self, listen: str = "127.0.0.1:0", credentials: grpc.ServerCredentials | None = None
    ) -> tuple[grpc.aio.Server, str]:
        """Start serving on `listen` (over TLS with `credentials`); return the server and the address it bound."""
        server = grpc.aio.server(options=pending_call_options(self.max_pending_calls))
        server.add_generic_rpc_handlers((self._handlers(),))
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        names = (
            protocol_pb2.DESCRIPTOR.services_by_name["ProtocolService"].full_name,
            health.SERVICE_NAME,
            reflection.SERVICE_NAME,
        )
        reflection.enable_server_reflection(names, server)
        host = listen.rsplit(":", 1)[0]
        port = server.add_secure_port(listen, credentials) if credentials else server.add_insecure_port(listen)
        await server.start()
        await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        return server, f"{host}:{port}"

    async def serve(
        self,
        listen: str = "127.0.0.1:0",
        register: str | None = None,
        ttl: float = 30.0,
        credentials: grpc.ServerCredentials | None = None,
        *,
        register_token: str | None = None,
        register_tls: Tls | bool | None = None,
        exit_with_parent: bool = False,
    ) -> None:
        """Serve until SIGTERM/SIGINT; announce the address on stdout; with `register`, register with
        that orchestrator (as an operator: `register_token`, over TLS with `register_tls`) and renew.
        With `exit_with_parent`, also stop when the process that started this one dies (however it
        died: a server killed -9 leaves no plugin of its own behind)."""
        server, address = await self.start(listen, credentials)
        print(f"{READY_LINE} {address}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        event_loop = "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
        log.info("serving %s on %s (event loop: %s)", ", ".join(self.protocols) or "nothing", address, event_loop)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        orphan_watch = asyncio.create_task(_stop_when_orphaned(stop)) if exit_with_parent else None
        renewer = (
            asyncio.create_task(keep_registered(register, address, ttl, register_token, register_tls))
            if register
            else None
        )
        await stop.wait()
        for helper in (renewer, orphan_watch):
            if helper is not None:
                helper.cancel()
        await server.stop(grace=2)
        if self._threads is not None:  # a handler still running cannot be stopped: do not wait for it
            self._threads.shutdown(wait=False, cancel_futures=True)

    def main(self, argv: list[str] | None = None) -> None:
        """Command-line entry: `--listen ADDRESS --register ORCHESTRATOR --ttl SECONDS --capacity gpus=1,...
        --max-pending-calls N --handler-threads N`,
        TLS to serve (`--tls-cert/--tls-key/--tls-client-ca`) and to register (`--register-tls-ca`,
        `--register-token` or MCP_TOKEN)."""
        parser = argparse.ArgumentParser(prog=self.name, description=f"Serve the {self.name} protocol plugin.")
        parser.add_argument("--listen", default="127.0.0.1:0")
        parser.add_argument("--register", help="orchestrator address to register with (and keep renewing)")
        parser.add_argument("--ttl", type=float, default=30.0)
        parser.add_argument(
            "--exit-with-parent", action="store_true", help="stop when the process that started this one ends"
        )
        parser.add_argument(
            "--capacity",
            type=_capacity_argument,
            help="what this instance offers, e.g. gpus=1,cpu_millis=4000 (0: unlimited)",
        )
        parser.add_argument("--tls-cert", help="serve over TLS with this certificate (PEM)")
        parser.add_argument("--tls-key", help="and this private key (PEM)")
        parser.add_argument("--tls-client-ca", help="require client certificates signed by this CA (mTLS)")
        parser.add_argument(
            "--register-token",
            default=os.environ.get("MCP_TOKEN"),
            help="bearer token of an operator, when the orchestrator checks tokens (default: $MCP_TOKEN)",
        )
        parser.add_argument("--register-tls-ca", help="reach the orchestrator over TLS, trusting this CA (PEM)")
        parser.add_argument(
            "--max-pending-calls",
            type=int,
            default=self.max_pending_calls,
            help="calls received and waiting for the event loop"
            f" before gRPC sheds any (default {self.max_pending_calls})",
        )
        parser.add_argument(
            "--handler-threads",
            type=int,
            default=self.handler_threads,
            help=f"plain (blocking) handler calls running at once (default {self.handler_threads})",
        )
        args = parser.parse_args(argv if argv is not None else sys.argv[1:])
        logging.basicConfig(level=logging.INFO)
        if args.max_pending_calls < 1:
            parser.error("--max-pending-calls must be at least 1")
        if args.handler_threads < 1:
            parser.error("--handler-threads must be at least 1")
        self.max_pending_calls = args.max_pending_calls
        self.handler_threads = args.handler_threads
        if args.capacity is not None:
            self.capacity = args.capacity
        credentials = None
        if args.tls_cert:
            client_ca = Path(args.tls_client_ca).read_bytes() if args.tls_client_ca else None
            credentials = grpc.ssl_server_credentials(
                [(Path(args.tls_key).read_bytes(), Path(args.tls_cert).read_bytes())],
                root_certificates=client_ca,
                require_client_auth=client_ca is not None,
            )
        register_tls = Tls.from_files(ca=args.register_tls_ca) if args.register_tls_ca else None
        loop_name = os.environ.get("MCP_EVENT_LOOP", "uvloop")
        if loop_name not in EVENT_LOOPS:
            parser.error(f"MCP_EVENT_LOOP must be one of {', '.join(EVENT_LOOPS)}, not {loop_name!r}")
        with asyncio.Runner(loop_factory=loop_factory(loop_name)) as runner:
            runner.run(
                self.serve(
                    args.listen,
                    args.register,
                    args.ttl,
                    credentials,
                    register_token=args.register_token,
                    register_tls=register_tls,
                    exit_with_parent=args.exit_with_parent,
                )
            )


EVENT_LOOPS = ("uvloop", "asyncio")


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop `Plugin.run` serves on (MCP_EVENT_LOOP, as for the server): uvloop's when
    asked for (the default) and installed (`pip install 'mcp-sdk[uvloop]'`: fewer instructions
    per call), else the standard library's."""
    if name != "uvloop":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


async def _stop_when_orphaned(stop: asyncio.Event, interval: float = 0.5) -> None:
    """Set `stop` once this process's parent has gone (it is then re-parented: its parent id changes)."""
    parent = os.getppid()
    while os.getppid() == parent:  # noqa: ASYNC110 (no event tells a process that its parent died)
        await asyncio.sleep(interval)
    log.warning("the process that started this plugin (pid %d) has ended; stopping", parent)
    stop.set()
