"""Metrics, traces, logs and health, observed from outside as an operator would."""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.request

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from mcp_sdk.proto import task_pb2
from mcp_server.api.server import start_server
from mcp_server.engine.logcontext import step_path_var, task_id_var
from mcp_server.telemetry.logs import JsonFormatter
from mcp_server.telemetry.tracing import TaskTracer, provider_for
from tests.conftest import client_for, make_settings
from tests.e2e.test_server_process import free_port
from tests.helpers import run, step, workflow

pytestmark = pytest.mark.asyncio


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


async def test_prometheus_metrics_count_tasks_steps_retries_fallbacks_and_store_calls(server_factory):
    port = free_port()
    running = await server_factory(metrics_port=port)
    client = client_for(running)
    await run(
        client, workflow("ok-flow", {"id": "r", "sequence": {"children": [step("a", "echo"), step("b", "echo")]}})
    )
    await run(
        client,
        workflow(
            "flaky-flow",
            step(
                "c",
                "chaos",
                "{'action': 'fail_times', 'times': 1}",
                retry={"max_attempts": 3, "initial_backoff": "0.01s"},
            ),
        ),
    )
    await run(
        client,
        workflow(
            "fb-flow",
            step("d", "chaos", "{'action': 'fail'}", retry={"max_attempts": 1}, fallbacks=[{"protocol": "echo"}]),
        ),
    )
    await run(client, workflow("bad-flow", step("e", "chaos", "{'action': 'fail', 'code': 'INVALID_ARGUMENT'}")))
    samples = await asyncio.to_thread(scrape, port)
    assert samples['mcp_tasks_finished_total{status="completed",workflow="ok-flow"}'] == 1
    assert samples['mcp_tasks_finished_total{status="failed",workflow="bad-flow"}'] == 1
    assert samples['mcp_tasks_submitted_total{workflow="ok-flow"}'] == 1
    assert samples['mcp_step_duration_seconds_count{protocol="echo",status="completed"}'] >= 2
    assert samples['mcp_step_retries_total{code="UNAVAILABLE",protocol="chaos"}'] == 1
    assert samples['mcp_fallbacks_total{protocol="echo"}'] == 1
    assert samples['mcp_store_operation_seconds_count{operation="save_checkpoint"}'] > 0
    assert "mcp_tasks_in_flight" in samples and "mcp_watchers" in samples
    await client.channel.close()


async def test_one_trace_per_task_with_spans_per_step_and_plugin_call_propagated_to_the_plugin(plugins):
    exporter = InMemorySpanExporter()
    running = await start_server(
        make_settings("sqlite://:memory:", tuple(p.address for p in plugins.values())),
        tracer=TaskTracer(provider_for("", "test", exporter)),
    )
    try:
        client = client_for(running)
        task = await run(
            client,
            workflow("traced", {"id": "root", "sequence": {"children": [step("a", "whoami"), step("b", "echo")]}}),
        )
        spans = {s.name: s for s in exporter.get_finished_spans()}
        assert {"task traced", "root", "a", "b", "call whoami", "call echo"} <= set(spans)
        trace_ids = {s.context.trace_id for s in spans.values()}
        assert len(trace_ids) == 1
        assert spans["root"].parent.span_id == spans["task traced"].context.span_id
        assert spans["a"].parent.span_id == spans["root"].context.span_id
        assert spans["call whoami"].parent.span_id == spans["a"].context.span_id
        traceparent = task.steps[1].output.struct_value.fields["traceparent"].string_value
        assert traceparent.split("-")[1] == format(trace_ids.pop(), "032x")  # the plugin joined the trace
        assert traceparent.split("-")[2] == format(spans["call whoami"].context.span_id, "016x")
        await client.channel.close()
    finally:
        await running.stop(0.5)


async def test_json_logs_carry_task_and_step():
    record = logging.LogRecord("mcp_server.engine", logging.WARNING, __file__, 1, "store unavailable", None, None)
    task_token, step_token = task_id_var.set("t-42"), step_path_var.set("root/review/draft#2")
    try:
        entry = json.loads(JsonFormatter().format(record))
    finally:
        task_id_var.reset(task_token)
        step_path_var.reset(step_token)
    assert entry["task_id"] == "t-42" and entry["step_path"] == "root/review/draft#2"
    assert entry["level"] == "WARNING" and entry["message"] == "store unavailable"


async def test_events_carry_step_durations(client):
    task = await run(client, workflow("timed", step("nap", "sleep", "{'ms': 50}")))
    events = [e async for e in client.tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=task.task_id))]
    done = next(e for e in events if e.type == task_pb2.TASK_EVENT_TYPE_STEP_COMPLETED and e.step_path == "nap")
    assert done.data.fields["duration_ms"].number_value >= 50
