"""The step cache on both stores, against the testkit plugin process: a later step with the same
key takes a completed step's output and calls nothing, within its ttl, in its owner's space
(or a shared one), counted apart from usage."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import grpc
import pytest

from mcp_sdk.proto import task_pb2, task_pb2_grpc, workflow_pb2, workflow_pb2_grpc
from mcp_server.auth import hash_token
from tests.conftest import client_for
from tests.helpers import create, plugin_stats, run, step_states, violations, workflow

pytestmark = pytest.mark.asyncio
TOKENS = {"ann": "ann-secret", "ben": "ben-secret", "writer": "writer-secret"}


def cached_wf(workflow_id: str, **cache: Any) -> workflow_pb2.Workflow:
    body = {
        "protocol": "metered",
        "input": "{'topic': input.topic, 'asked': input.asked, 'usage': {'prompt_tokens': 7}}",
        "cache": {"ttl": "60s", **cache},
    }
    return workflow(workflow_id, {"id": "draft", "step": body})


async def steps_of(client: Any, task_id: str) -> dict[str, task_pb2.StepState]:
    return step_states((await client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=task_id))).task)


async def test_a_second_task_with_the_same_input_takes_the_cached_output_and_calls_nothing(
    server_factory, store_url, testkit
):
    running = await server_factory(store=store_url)
    client = client_for(running)
    await create(client, cached_wf("cached-draft"))
    first = await run(client, cached_wf("cached-draft"), {"topic": "tea", "asked": 1})
    second = await run(client, cached_wf("cached-draft"), {"topic": "tea", "asked": 1})
    other = await run(client, cached_wf("cached-draft"), {"topic": "tea", "asked": 2})
    assert first.status == second.status == other.status == task_pb2.TASK_STATUS_COMPLETED
    hit = (await steps_of(client, second.task_id))["draft"]
    assert hit.cached and hit.cached_from == first.task_id and not hit.usage
    assert second.result == first.result and not second.usage and dict(first.usage) == {"prompt_tokens": 7}
    assert not (await steps_of(client, other.task_id))["draft"].cached  # another input, another key
    calls = (await plugin_stats(testkit))["by_protocol"]["metered"]
    assert calls == 2
    registry = running.orchestrator.metrics.registry
    assert registry.get_sample_value("mcp_step_cache_total", {"outcome": "hit"}) == 1
    assert registry.get_sample_value("mcp_step_cache_total", {"outcome": "miss"}) == 2
    await client.channel.close()


async def test_a_cel_key_and_the_ttl_decide_what_is_reused(server_factory, store_url):
    running = await server_factory(store=store_url)
    client = client_for(running)
    wf = cached_wf("cached-by-topic", key="input.topic", ttl="1s")
    await create(client, wf)
    first = await run(client, wf, {"topic": "tea", "asked": 1})
    same_topic = await run(client, wf, {"topic": "tea", "asked": 2})
    assert (await steps_of(client, same_topic.task_id))["draft"].cached_from == first.task_id
    await asyncio.sleep(1.2)
    later = await run(client, wf, {"topic": "tea", "asked": 3})
    assert not (await steps_of(client, later.task_id))["draft"].cached
    await client.channel.close()


async def test_owners_do_not_read_each_others_cache_unless_it_is_shared(server_factory, store_url, tmp_path):
    principals = [
        {"name": n, "token_sha256": hash_token(t), "roles": ["author"] if n == "writer" else []}
        for n, t in TOKENS.items()
    ]
    path = tmp_path / "principals.json"
    path.write_text(json.dumps({"principals": principals}))
    running = await server_factory(store=store_url, auth_file=str(path))
    async with grpc.aio.insecure_channel(running.address) as channel:
        tasks = task_pb2_grpc.TaskServiceStub(channel)
        workflows = workflow_pb2_grpc.WorkflowServiceStub(channel)

        def who(name: str) -> list[tuple[str, str]]:
            return [("authorization", f"Bearer {TOKENS[name]}")]

        for wf in (cached_wf("own-cache"), cached_wf("shared-cache", shared=True)):
            await workflows.CreateWorkflow(workflow_pb2.CreateWorkflowRequest(workflow=wf), metadata=who("writer"))

        async def draft(workflow_id: str, name: str) -> task_pb2.Task:
            request = task_pb2.SubmitTaskRequest(workflow_id=workflow_id)
            request.input_data.update({"topic": "tea", "asked": 1})
            task = (await tasks.SubmitTask(request, metadata=who(name))).task
            async for _ in tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=task.task_id), metadata=who(name)):
                pass
            reply = await tasks.GetTask(task_pb2.GetTaskRequest(task_id=task.task_id), metadata=who(name))
            return reply.task

        anns = await draft("own-cache", "ann")
        bens = await draft("own-cache", "ben")
        assert not step_states(bens)["draft"].cached  # ann's output is ann's
        assert step_states(await draft("own-cache", "ann"))["draft"].cached_from == anns.task_id
        shared = await draft("shared-cache", "ann")
        assert step_states(await draft("shared-cache", "ben"))["draft"].cached_from == shared.task_id


async def test_a_cache_needs_a_ttl_and_a_key_that_compiles(server_factory):
    running = await server_factory()
    client = client_for(running)
    for cache, field in (({"key": "input.("}, "workflow.root.step.cache.key"), ({}, "workflow.root.step.cache.ttl")):
        body = {"protocol": "echo", "cache": cache}
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await create(client, workflow("bad-cache", {"id": "s", "step": body}))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in violations(err.value), violations(
            err.value
        )
    await client.channel.close()
