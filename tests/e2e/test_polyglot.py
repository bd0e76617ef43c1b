"""Polyglot: a Node.js client submits and watches a task; a Node.js plugin serves a step."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2

from mcp_sdk.proto import registry_pb2, registry_pb2_grpc, task_pb2, task_pb2_grpc, workflow_pb2, workflow_pb2_grpc
from tests.helpers import create, events, result, run, step, step_waiting, wait_done, workflow

pytestmark = pytest.mark.asyncio
ROOT = Path(__file__).resolve().parents[2]
NODE = shutil.which("node")


@pytest.fixture(scope="module")
def node_plugin(request):
    assert NODE, "node is required for the polyglot tests"
    flags = ["--execute-only"] if getattr(request, "param", "") == "execute-only" else []
    process = subprocess.Popen(
        [NODE, str(ROOT / "examples/plugins/node/plugin.js"), *flags], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.startswith("MCP_PLUGIN_LISTENING"), line
    yield line.split()[1]
    process.terminate()
    process.wait(timeout=10)


async def run_node_client(address: str, workflow_id: str, input_json: str, *flags: str) -> dict[str, Any]:
    """Run examples/clients/node/client.js against `address`; its JSON summary of the task."""
    proc = await asyncio.create_subprocess_exec(
        NODE,
        str(ROOT / "examples/clients/node/client.js"),
        address,
        workflow_id,
        input_json,
        *flags,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, stderr.decode()
    summary: dict[str, Any] = json.loads(stdout)
    return summary


async def test_node_client_submits_a_task_and_watches_it_to_the_end(server, client):
    await create(
        client,
        workflow("for-node", {"id": "root", "sequence": {"children": [step("a", "append"), step("b", "append")]}}),
    )
    summary = await run_node_client(server.address, "for-node", json.dumps({"text": "js:"}))
    assert summary["status"] == "TASK_STATUS_COMPLETED"
    assert summary["result"]["text"] == "js:ab"
    sequences = [e["sequence"] for e in summary["events"]]
    assert sequences == list(range(1, len(sequences) + 1))
    assert summary["events"][-1]["type"] == "TASK_EVENT_TYPE_COMPLETED"


async def test_node_client_deletes_the_finished_task(server, client):
    await create(client, workflow("for-node-delete", step("a", "append")))
    summary = await run_node_client(server.address, "for-node-delete", json.dumps({"text": "gone:"}), "--delete")
    assert summary["status"] == "TASK_STATUS_COMPLETED" and summary["deleted"] is True
    assert summary["after_delete"] == grpc.StatusCode.NOT_FOUND.value[0]


async def test_node_client_reruns_its_task_through_a_bulk_action(server, client):
    await create(client, workflow("for-node-bulk", step("a", "append")))
    summary = await run_node_client(server.address, "for-node-bulk", json.dumps({"text": "b:"}), "--bulk-rerun")
    assert summary["status"] == "TASK_STATUS_COMPLETED"
    bulk = summary["bulk"]
    assert bulk["state"] == "BULK_ACTION_STATE_DONE" and (bulk["matched"], bulk["succeeded"]) == (1, 1)
    assert bulk["reruns_of"] == [summary["task_id"]]


async def test_node_client_publishes_an_event_that_starts_the_workflows_it_triggers(server, client):
    trigger = {"event": "node.said", "input": "{'text': event.data.text}"}
    await create(client, workflow("for-node-event", step("a", "append"), triggers=[trigger]))
    picky = {"event": "node.said", "filter": "event.data.text == 'never'"}
    await create(client, workflow("for-node-event-never", step("a", "append"), triggers=[picky]))
    strict = {"type": "object", "required": ["missing"]}
    strict_one = workflow("for-node-event-strict", step("a", "append"), triggers=[trigger], input_schema=strict)
    await create(client, strict_one)
    summary = await run_node_client(server.address, "node.said", json.dumps({"text": "ev:"}), "--publish")
    assert summary["created"] == [True] and summary["created_again"] == [False] and summary["same_tasks"]
    assert summary["refused"] == [["for-node-event-strict", grpc.StatusCode.INVALID_ARGUMENT.value[0]]]
    [done] = summary["finished"]
    assert done["workflow_id"] == "for-node-event" and done["status"] == "TASK_STATUS_COMPLETED"
    assert done["result"]["text"] == "ev:a" and done["event_label"] == "node.said"


async def test_node_client_publishes_the_event_a_task_waits_for_by_key(server, client):
    await create(client, workflow("for-node-wait", {"id": "paid", "wait": {"event": "node.paid", "key": "input.id"}}))
    task = (await client.tasks.SubmitTask(
        task_pb2.SubmitTaskRequest(workflow_id="for-node-wait", input_data={"id": "n-1"})
    )).task  # fmt: skip
    await step_waiting(client, task.task_id)
    summary = await run_node_client(server.address, "node.paid", json.dumps({"amount": 3}), "--publish", "--key", "n-1")
    assert summary["woken"] == [[task.task_id, "paid", True]] and summary["woken_again"] == []
    done = await wait_done(client, task.task_id)
    assert done.status == task_pb2.TASK_STATUS_COMPLETED and done.result.struct_value.fields["amount"].number_value == 3


async def test_node_client_sets_a_queue_timeout_and_reads_the_deadline(server, client):
    await create(client, workflow("for-node-timely", step("a", "append")))
    flags = ("--queue-timeout-ms", "1500")
    summary = await run_node_client(server.address, "for-node-timely", json.dumps({"text": "t:"}), *flags)
    assert summary["status"] == "TASK_STATUS_COMPLETED" and summary["queue_timeout_ms"] == 1500


async def test_node_client_submits_and_follows_a_task_in_one_stream(server, client):
    await create(
        client,
        workflow(
            "for-node-follow", {"id": "root", "sequence": {"children": [step("a", "append"), step("b", "append")]}}
        ),
    )
    summary = await run_node_client(server.address, "for-node-follow", json.dumps({"text": "follow:"}), "--follow")
    assert summary["status"] == "TASK_STATUS_COMPLETED" and summary["result"]["text"] == "follow:ab"
    stored = await events(client, summary["task_id"])
    assert [(e["sequence"], e["step_path"]) for e in summary["events"]] == [(e.sequence, e.step_path) for e in stored]
    assert (
        summary["events"][0]["type"] == "TASK_EVENT_TYPE_QUEUED"
        and summary["events"][-1]["type"] == "TASK_EVENT_TYPE_COMPLETED"
    )


async def test_node_client_runs_a_task_in_one_run_task_call(server, client):
    await create(
        client,
        workflow(
            "for-node-run",
            {
                "id": "root",
                "sequence": {
                    "children": [
                        step("a", "append"),
                        step("nap", "sleep", "{'ms': 1000, 'text': prev.text}"),
                        step("b", "append"),
                    ]
                },
            },
        ),
    )
    summary = await run_node_client(server.address, "for-node-run", json.dumps({"text": "run:"}), "--run")
    assert summary["status"] == "TASK_STATUS_COMPLETED" and summary["result"]["text"] == "run:ab"
    assert summary["header_task_id"] == summary["task_id"]
    assert summary["status_at_header"] in (
        "TASK_STATUS_PENDING",
        "TASK_STATUS_RUNNING",
    )  # the id came at once, before the end


@pytest.mark.parametrize("node_plugin", ["execute-many", "execute-only"], indirect=True)
async def test_a_plugin_written_in_node_runs_a_step(server, client, node_plugin, request):
    reply = await client.registry.RegisterProtocol(registry_pb2.RegisterProtocolRequest(address=node_plugin))
    assert [p.manifest.name for p in reply.protocols] == ["word_stats"]
    assert reply.protocols[0].capacity.cpu_millis == 2000 and reply.protocols[0].manifest.resources.cpu_millis == 100
    wf = workflow(
        "node-step",
        {
            "id": "root",
            "sequence": {
                "children": [
                    step("count", "word_stats"),
                    step("again", "word_stats", "{'text': prev.reversed}", stream=True),
                ]
            },
        },
    )
    task = await run(client, wf, {"text": "one two three"})
    assert task.status == task_pb2.TASK_STATUS_COMPLETED, task.error
    assert result(task) == {"words": 3, "reversed": "one two three", "by": "node"}
    bad = await run(client, workflow("node-bad", step("count", "word_stats")), {"nope": 1})
    assert bad.status == task_pb2.TASK_STATUS_FAILED and "INVALID_ARGUMENT" in bad.error.message
    streams = server.orchestrator.channels.streams
    if request.node.callspec.params["node_plugin"] == "execute-many":  # plain calls went over its ExecuteMany stream
        assert node_plugin in streams.open_to()
    else:  # it answered UNIMPLEMENTED: called with Execute
        assert not streams.serves(node_plugin) and node_plugin not in streams.open_to()


async def test_node_client_reads_why_and_when_it_was_refused(server_factory):
    """A client written from the protos in another language reads the google.rpc.Status details:
    the field a bad request got wrong (a missing workflow id, an input the workflow's schema
    rejects), and a rate limit's reason, key and RetryInfo delay."""
    running = await server_factory()
    async with grpc.aio.insecure_channel(running.address) as channel:
        await workflow_pb2_grpc.WorkflowServiceStub(channel).CreateWorkflow(
            workflow_pb2.CreateWorkflowRequest(workflow=workflow("for-node-limited", step("a", "append")))
        )
        bad = await run_node_client(running.address, "", "{}", "--refused")
        assert bad["grpc_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert bad["status"]["violations"] == ["workflow_id"] and bad["status"]["domain"] == "mcp.v1"
        typed = workflow("for-node-typed", step("a", "append"), input_schema={"required": ["text"]})
        await workflow_pb2_grpc.WorkflowServiceStub(channel).CreateWorkflow(
            workflow_pb2.CreateWorkflowRequest(workflow=typed)
        )
        rejected = await run_node_client(running.address, "for-node-typed", '{"txt": 1}', "--refused")
        assert rejected["grpc_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert rejected["status"]["reason"] == "INPUT_REJECTED" and rejected["status"]["violations"] == ["input_data"]
        assert rejected["status"]["metadata"] == {"workflow_id": "for-node-typed", "workflow_version": "1"}
        limit = registry_pb2.RateLimit(key="submit:", limit=1, period=duration_pb2.Duration(seconds=60))
        await registry_pb2_grpc.ProtocolRegistryStub(channel).PutRateLimit(
            registry_pb2.PutRateLimitRequest(rate_limit=limit)
        )
        await task_pb2_grpc.TaskServiceStub(channel).SubmitTask(
            task_pb2.SubmitTaskRequest(workflow_id="for-node-limited")
        )
        limited = await run_node_client(running.address, "for-node-limited", "{}", "--refused")
    assert limited["grpc_code"] == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    said = limited["status"]
    assert said["reason"] == "RATE_LIMITED" and said["metadata"]["key"] == "submit:"
    assert 0 < said["retry_after_seconds"] <= 60
    assert float(said["metadata"]["retry_after_seconds"]) == pytest.approx(said["retry_after_seconds"], abs=0.001)
