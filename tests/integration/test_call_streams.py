"""Plugin calls over ExecuteMany streams (protocols/call_streams.py), against real plugin
processes and real gRPC servers on loopback: the same answers as Execute, deadlines and
cancellations that reach the plugin, a plugin without the call, a stream that misbehaves, an
output too large for one message, and a plugin killed under the stream."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from dataclasses import replace

import grpc
import pytest
from google.protobuf import json_format, struct_pb2

from mcp_sdk.proto import protocol_pb2, protocol_pb2_grpc, task_pb2
from mcp_server.settings import Limits
from tests.conftest import client_for, spawn_plugin
from tests.helpers import plugin_stats, result, run, step, step_states, submit, until_plugin_called, wait_done, workflow

pytestmark = pytest.mark.asyncio
FAST_RETRY = {"max_attempts": 3, "initial_backoff": "0.05s", "max_backoff": "0.1s"}


def mixed(workflow_id: str) -> object:
    branches = [step(f"e{i}", "echo", f"{{'i': {i}}}") for i in range(20)]
    return workflow(
        workflow_id,
        {
            "id": "root",
            "sequence": {
                "children": [
                    step("a", "append"),
                    step("b", "append"),
                    {"id": "fan", "parallel": {"children": branches}},
                    step("c", "append", "steps.b"),
                ]
            },
        },
    )


async def test_calls_over_the_stream_answer_exactly_as_execute_calls_do(server_factory, plugins):
    streamed = await server_factory()
    unary = await server_factory(plugin_call_streams=False)
    finished = []
    for running in (streamed, unary):
        client = client_for(running)
        finished.append(await run(client, mixed("mixed"), {"text": ">"}))
        await client.channel.close()
    assert [t.status for t in finished] == [task_pb2.TASK_STATUS_COMPLETED] * 2
    assert result(finished[0]) == result(finished[1]) == {"text": ">abc", "trail": ["root/a", "root/b", "root/c"]}
    states = [{path: (s.status, s.output) for path, s in step_states(t).items()} for t in finished]
    assert states[0] == states[1]
    testkit = plugins["testkit"].address
    assert testkit in streamed.orchestrator.channels.streams.open_to()  # the calls went over its stream
    assert unary.orchestrator.channels.streams.open_to() == []


async def test_an_attempt_deadline_over_the_stream_fails_the_attempt_and_stops_the_plugin_s_work(
    client, server, testkit
):
    before = (await plugin_stats(testkit))["cancelled"]
    task = await run(
        client,
        workflow(
            "late",
            step(
                "nap",
                "sleep",
                "{'ms': 3000}",
                attempt_timeout="0.2s",
                retry={"max_attempts": 2, "initial_backoff": "0.01s"},
            ),
        ),
    )
    assert task.status == task_pb2.TASK_STATUS_FAILED
    assert (
        task.error.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
        and "attempt deadline of 0.2s" in task.error.message
    )
    assert step_states(task)["nap"].attempts == 2
    async with asyncio.timeout(5):
        while (await plugin_stats(testkit))["cancelled"] < before + 2:  # both attempts were stopped on the plugin
            await asyncio.sleep(0.05)


async def test_cancelling_a_task_cancels_its_call_on_the_plugin(client, testkit):
    from tests.helpers import create

    before = (await plugin_stats(testkit))["cancelled"]
    await create(client, workflow("long-nap", step("nap", "sleep", "{'ms': 5000}")))
    task = await submit(client, "long-nap")
    async with asyncio.timeout(5):
        while (await plugin_stats(testkit))["in_flight"] == 0:
            await asyncio.sleep(0.02)
    await client.tasks.CancelTask(task_pb2.CancelTaskRequest(task_id=task.task_id))
    assert (await wait_done(client, task.task_id)).status == task_pb2.TASK_STATUS_CANCELLED
    async with asyncio.timeout(5):
        while (await plugin_stats(testkit))["cancelled"] < before + 1:
            await asyncio.sleep(0.05)


async def test_a_plugin_without_execute_many_is_called_with_execute(client, server, chaos_plugin):
    task = await run(client, workflow("no-streams", step("c", "chaos", "{'action': 'echo', 'x': 1}")))
    assert task.status == task_pb2.TASK_STATUS_COMPLETED and step_states(task)["c"].attempts == 1
    streams = server.orchestrator.channels.streams
    assert not streams.serves(chaos_plugin.address) and chaos_plugin.address not in streams.open_to()


class _GarbageStreams:
    """A plugin whose ExecuteMany answers with bytes that do not parse (or, `confused`, answers
    every call twice and ids nobody asked for), and whose Execute works: a real gRPC server on
    loopback."""

    def __init__(self, confused: bool = False) -> None:
        self.server = grpc.aio.server()
        self.stream_calls = 0
        self.execute_calls = 0
        manifest = protocol_pb2.ProtocolManifest(name="garbled_echo")

        async def describe(request: protocol_pb2.DescribeRequest, context: object) -> protocol_pb2.DescribeResponse:
            return protocol_pb2.DescribeResponse(protocols=[manifest])

        async def execute(request: protocol_pb2.ExecuteRequest, context: object) -> protocol_pb2.ExecuteResponse:
            self.execute_calls += 1
            return protocol_pb2.ExecuteResponse(output=request.input)

        async def execute_many(requests: AsyncIterator[bytes], context: object) -> AsyncIterator[bytes]:
            async for data in requests:
                self.stream_calls += 1
                if not confused:
                    yield b"\xff\xff\xff\xff not an ExecuteManyResponse"
                    continue
                reply = protocol_pb2.ExecuteManyResponse()
                for call in protocol_pb2.ExecuteManyRequest.FromString(data).calls:
                    for _ in range(2):
                        reply.outcomes.add(id=call.id, response=protocol_pb2.ExecuteResponse(output=call.request.input))
                    reply.outcomes.add(id=call.id + 10_000, response=protocol_pb2.ExecuteResponse())
                yield reply.SerializeToString()

        p = protocol_pb2
        self.server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "mcp.v1.ProtocolService",
                    {
                        "Describe": grpc.unary_unary_rpc_method_handler(
                            describe, p.DescribeRequest.FromString, p.DescribeResponse.SerializeToString
                        ),
                        "Execute": grpc.unary_unary_rpc_method_handler(
                            execute, p.ExecuteRequest.FromString, p.ExecuteResponse.SerializeToString
                        ),
                        "ExecuteMany": grpc.stream_stream_rpc_method_handler(execute_many),
                    },
                ),
            )
        )
        self.address = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"


async def test_a_stream_that_sends_garbage_fails_the_calls_on_it_then_the_instance_is_called_with_execute(
    server_factory,
):
    plugin = _GarbageStreams()
    await plugin.server.start()
    try:
        running = await server_factory(extra_plugins=(plugin.address,), session_plugins=False)
        client = client_for(running)
        task = await run(client, workflow("garbled", step("g", "garbled_echo", "{'x': 7}", retry=FAST_RETRY)))
        assert task.status == task_pb2.TASK_STATUS_COMPLETED and result(task) == {"x": 7}
        assert step_states(task)["g"].attempts == 2  # the first went over the broken stream, the retry over Execute
        assert plugin.stream_calls == 1 and plugin.execute_calls == 1
        assert not running.orchestrator.channels.streams.serves(plugin.address)
        again = await run(client, workflow("garbled-again", step("g", "garbled_echo", "{'x': 8}")))
        assert result(again) == {"x": 8} and plugin.stream_calls == 1  # no stream any more
        await client.channel.close()
    finally:
        await plugin.server.stop(0)


async def test_answers_twice_or_to_ids_nobody_asked_for_are_ignored(server_factory):
    plugin = _GarbageStreams(confused=True)
    await plugin.server.start()
    try:
        running = await server_factory(extra_plugins=(plugin.address,), session_plugins=False)
        client = client_for(running)
        branches = [step(f"g{i}", "garbled_echo", f"{{'i': {i}}}") for i in range(10)]
        task = await run(client, workflow("confused", {"id": "fan", "parallel": {"children": branches}}))
        assert task.status == task_pb2.TASK_STATUS_COMPLETED
        assert result(task) == {f"g{i}": {"i": i} for i in range(10)}  # each call's own answer, once
        assert plugin.execute_calls == 0 and running.orchestrator.channels.streams.serves(plugin.address)
        await client.channel.close()
    finally:
        await plugin.server.stop(0)


async def test_an_output_too_large_for_one_message_fails_only_its_call(server_factory, plugins):
    running = await server_factory(limits=replace(Limits(), max_message_bytes=256 * 1024, max_value_bytes=1024 * 1024))
    client = client_for(running)
    branches = [
        step("big", "sized", "{'bytes': 400000}", retry={"max_attempts": 1}),
        *(step(f"small{i}", "sleep", "{'ms': 200}") for i in range(5)),
    ]
    task = await run(
        client,
        workflow(
            "too-big", {"id": "fan", "parallel": {"children": branches, "join": "JOIN_POLICY_QUORUM", "quorum": 5}}
        ),
    )
    states = step_states(task)
    assert states["fan/big"].status == task_pb2.STEP_STATUS_FAILED
    assert states["fan/big"].error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert all(
        states[f"fan/small{i}"].status == task_pb2.STEP_STATUS_COMPLETED for i in range(5)
    )  # the same stream, untouched
    assert plugins["testkit"].address in running.orchestrator.channels.streams.open_to()
    await client.channel.close()


async def test_a_plugin_killed_under_the_stream_fails_its_calls_unavailable_and_the_retry_runs_on_the_restarted_one(
    server_factory,
):
    plugin = spawn_plugin("protocol_plugins.testkit")
    port = plugin.address.rsplit(":", 1)[1]
    restarted = None
    try:
        running = await server_factory(extra_plugins=(plugin.address,), session_plugins=False)
        client = client_for(running)
        from tests.helpers import create

        await create(
            client,
            workflow(
                "survives",
                step(
                    "nap",
                    "sleep",
                    "{'ms': 800}",
                    retry={"max_attempts": 5, "initial_backoff": "0.3s", "max_backoff": "0.5s"},
                ),
            ),
        )
        task = await submit(client, "survives")
        async with grpc.aio.insecure_channel(plugin.address) as channel:
            await until_plugin_called(
                protocol_pb2_grpc.ProtocolServiceStub(channel), task.task_id
            )  # the call is on the stream
        plugin.process.send_signal(signal.SIGKILL)
        plugin.process.wait(timeout=10)
        restarted = spawn_plugin("protocol_plugins.testkit", f"127.0.0.1:{port}")
        finished = await wait_done(client, task.task_id, 30)
        assert finished.status == task_pb2.TASK_STATUS_COMPLETED
        assert step_states(finished)["nap"].attempts >= 2
        assert plugin.address in running.orchestrator.channels.streams.open_to()  # a new stream to the restarted plugin
        await client.channel.close()
    finally:
        for proc in (plugin, restarted):
            if proc is not None and proc.process.poll() is None:
                proc.process.terminate()
                proc.process.wait(timeout=10)


async def test_thousands_of_waiting_calls_share_one_stream(server_factory, plugins):
    """2,000 concurrent calls from one step each: every one answered, over the one stream."""
    running = await server_factory(limits=replace(Limits(), max_concurrency=2000))
    client = client_for(running)
    items = [{"ms": 300, "i": i} for i in range(2000)]  # as given (a CEL .map() is held to 1,000 items)
    task = await run(
        client,
        workflow(
            "many",
            {
                "id": "m",
                "map": {
                    "items": "input.items",
                    "max_concurrency": 2000,
                    "body": step("nap", "sleep"),
                },
            },
        ),
        {"items": items},
        timeout=60,
    )
    assert task.status == task_pb2.TASK_STATUS_COMPLETED and task.HasField("result_ref")  # too large to travel inline
    data = b"".join(
        [chunk.data async for chunk in client.tasks.ReadValue(task_pb2.ReadValueRequest(task_id=task.task_id))]
    )
    outputs = json_format.MessageToDict(struct_pb2.Value.FromString(data))
    assert [o["i"] for o in outputs] == list(range(2000)) and all(o["slept_ms"] == 300 for o in outputs)
    assert running.orchestrator.channels.streams.open_to() == [plugins["testkit"].address]
    await client.channel.close()
