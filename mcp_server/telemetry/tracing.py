"""OpenTelemetry traces: one trace per task, a span per node and per plugin call.

Spans are driven by the task's events: a task span opens at STARTED/RESUMED, a node span at
STEP_STARTED (child of its parent node's span, found by step path) and closes at its
completion or failure. The plugin caller opens a client span under the step's span and
sends its context to the plugin in the gRPC metadata (W3C `traceparent`).
"""

from __future__ import annotations

from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagate import inject
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor, SpanExporter
from opentelemetry.trace import Span, Status, StatusCode

from mcp_sdk.proto import task_pb2
from mcp_server.engine.event_types import E

ENDS = {E.TASK_EVENT_TYPE_COMPLETED, E.TASK_EVENT_TYPE_FAILED, E.TASK_EVENT_TYPE_CANCELLED}


def provider_for(kind: str, service: str, exporter: SpanExporter | None = None) -> TracerProvider:
    """A tracer provider exporting to `exporter`, or to the console for kind "console"."""
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    if exporter is None and kind == "console":
        exporter = ConsoleSpanExporter()
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


class TaskTracer:
    """Turns task events into spans (an EventListener) and parents plugin-call spans."""

    def __init__(self, provider: TracerProvider) -> None:
        self.tracer = provider.get_tracer("mcp_server")
        self._tasks: dict[str, Span] = {}
        self._nodes: dict[tuple[str, str], Span] = {}

    def on_event(self, task: task_pb2.Task, event: task_pb2.TaskEvent) -> None:
        if event.type in (E.TASK_EVENT_TYPE_STARTED, E.TASK_EVENT_TYPE_RESUMED):
            span = self.tracer.start_span(
                f"task {task.workflow_id}",
                attributes={
                    "mcp.task_id": task.task_id,
                    "mcp.workflow_id": task.workflow_id,
                    "mcp.workflow_version": task.workflow_version,
                    "mcp.resumed": event.type == E.TASK_EVENT_TYPE_RESUMED,
                },
            )
            self._tasks[task.task_id] = span
        elif event.type == E.TASK_EVENT_TYPE_STEP_STARTED:
            parent = self._parent(task.task_id, event.step_path)
            attributes = {"mcp.task_id": task.task_id, "mcp.step_path": event.step_path}
            if event.protocol:
                attributes["mcp.protocol"] = event.protocol
            name = event.step_path.rsplit("/", 1)[-1]
            self._nodes[(task.task_id, event.step_path)] = self.tracer.start_span(
                name, context=parent, attributes=attributes
            )
        elif event.type in (E.TASK_EVENT_TYPE_STEP_COMPLETED, E.TASK_EVENT_TYPE_STEP_FAILED):
            node_span = self._nodes.pop((task.task_id, event.step_path), None)
            if node_span is not None:
                if event.type == E.TASK_EVENT_TYPE_STEP_FAILED:
                    node_span.set_status(Status(StatusCode.ERROR, event.message))
                node_span.end()
        elif event.type in (
            E.TASK_EVENT_TYPE_STEP_RETRYING,
            E.TASK_EVENT_TYPE_FALLBACK_USED,
            E.TASK_EVENT_TYPE_TRANSITION_TAKEN,
            E.TASK_EVENT_TYPE_SUPERVISOR_DECISION,
        ):
            open_span = self._nodes.get((task.task_id, event.step_path))
            if open_span is not None:
                open_span.add_event(
                    E.Name(event.type).removeprefix("TASK_EVENT_TYPE_").lower(), {"message": event.message}
                )
        elif event.type in ENDS:
            for key in [k for k in self._nodes if k[0] == task.task_id]:
                self._nodes.pop(key).end()
            task_span = self._tasks.pop(task.task_id, None)
            if task_span is not None:
                if event.type != E.TASK_EVENT_TYPE_COMPLETED:
                    task_span.set_status(Status(StatusCode.ERROR, event.message))
                task_span.end()

    def _parent(self, task_id: str, path: str) -> Context | None:
        while "/" in path:
            path = path.rsplit("/", 1)[0]
            span = self._nodes.get((task_id, path))
            if span is not None:
                return trace.set_span_in_context(span)
        task_span = self._tasks.get(task_id)
        return trace.set_span_in_context(task_span) if task_span is not None else None

    def start_call(self, task_id: str, path: str, protocol: str) -> tuple[Span, list[tuple[str, str]]]:
        """A client span for one plugin call, and the metadata that carries its context."""
        parent_span = self._nodes.get((task_id, path))
        parent = trace.set_span_in_context(parent_span) if parent_span is not None else self._parent(task_id, path)
        span = self.tracer.start_span(
            f"call {protocol}",
            context=parent,
            kind=trace.SpanKind.CLIENT,
            attributes={"rpc.system": "grpc", "rpc.service": "mcp.v1.ProtocolService", "mcp.protocol": protocol},
        )
        carrier: dict[str, str] = {}
        inject(carrier, context=trace.set_span_in_context(span))
        return span, list(carrier.items())


def finish_call(span: Span, error: Any = None) -> None:
    if error is not None:
        span.set_status(Status(StatusCode.ERROR, str(error)))
    span.end()
