"""The llm plugin process against a scripted OpenAI-compatible server process on loopback (no
model runs on these machines): chat and structured output with its repair loop, usage reported
to the engine, and provider errors mapped once to what the engine retries."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from google.protobuf import json_format

from mcp_sdk.proto import task_pb2, workflow_pb2
from tests.conftest import client_for
from tests.helpers import run, step_states, workflow
from tests.support.llm_plugin import spawn_llm_plugin

pytestmark = pytest.mark.asyncio
E = task_pb2.TaskEventType
SCHEMA = {
    "type": "object",
    "properties": {"title": {"type": "string"}, "score": {"type": "integer"}},
    "required": ["title", "score"],
}


@pytest.fixture(scope="module")
def fake_llm() -> Iterator[str]:
    """The scripted OpenAI-compatible server's base URL (GET /requests: the bodies it received)."""
    server = subprocess.Popen([sys.executable, "-m", "tests.support.fake_llm"], stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    port = server.stdout.readline().split()[1]
    yield f"http://127.0.0.1:{port}"
    stop(server)


@pytest.fixture(scope="module")
def llm_plugin(fake_llm: str) -> Iterator[str]:
    plugin, address = spawn_llm_plugin(f"{fake_llm}/v1")
    yield address
    stop(plugin)


def stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:  # one stuck in a computation SIGTERM cannot reach
        process.kill()
        process.wait(timeout=10)


@pytest.fixture
async def client(server_factory, llm_plugin):  # type: ignore[no-untyped-def]
    running = await server_factory(extra_plugins=(llm_plugin,))
    client = client_for(running)
    yield client
    await client.channel.close()


def llm_step(protocol: str, model: str, **extra: Any) -> dict[str, Any]:
    fields = ", ".join(f"'{k}': {v!r}" for k, v in extra.items())
    body: dict[str, Any] = {
        "protocol": protocol,
        "input": f"{{'prompt': input.prompt, 'model': '{model}'{', ' + fields if fields else ''}}}",
        "retry": {"max_attempts": 2, "initial_backoff": "0.05s"},
    }
    return {"id": "ask", "step": body}


async def test_chat_answers_with_its_text_and_reports_usage(client):
    task = await run(client, workflow("chat-ok", llm_step("chat", "ok")), {"prompt": "Say hello"})
    assert task.status == task_pb2.TASK_STATUS_COMPLETED, task.error
    output = task.result.struct_value.fields
    assert (
        output["text"].string_value == "Hello from the fake model." and output["finish_reason"].string_value == "stop"
    )
    assert dict(task.usage) == {"prompt_tokens": 11, "completion_tokens": 7}


async def test_structured_repairs_an_answer_that_does_not_fit_and_counts_both_calls(client):
    wf = workflow("structured-repair", llm_step("structured", "json-repair", schema=SCHEMA))
    task = await run(client, wf, {"prompt": "Name a drink and score it"})
    assert task.status == task_pb2.TASK_STATUS_COMPLETED, task.error
    assert task.result.struct_value.fields["title"].string_value == "Tea"
    assert dict(task.usage) == {"prompt_tokens": 31, "completion_tokens": 14}  # the answer and its repair


async def test_what_cannot_work_fails_at_once_and_what_may_work_is_retried(client):
    cases = [
        ("length", "structured", {"schema": SCHEMA}, "OUT_OF_RANGE", 1),
        ("json-never", "structured", {"schema": SCHEMA, "repairs": 1}, "INVALID_ARGUMENT", 1),
        ("400", "chat", {}, "INVALID_ARGUMENT", 1),
        ("429", "chat", {}, "RESOURCE_EXHAUSTED", 2),
    ]
    for model, protocol, extra, code, attempts in cases:
        started = time.monotonic()
        task = await run(client, workflow(f"fails-{model}", llm_step(protocol, model, **extra)), {"prompt": model})
        assert task.status == task_pb2.TASK_STATUS_FAILED, model
        state = step_states((await client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=task.task_id))).task)["ask"]
        assert code in task.error.message and state.attempts == attempts, (model, task.error.message, state.attempts)
        if model == "json-never":  # the failed call's two requests still count
            assert dict(task.usage) == {"prompt_tokens": 22, "completion_tokens": 14}
            assert dict(state.usage) == {"prompt_tokens": 22, "completion_tokens": 14}
        if model == "429":  # the second attempt waited for the provider's Retry-After (400 ms)
            assert time.monotonic() - started >= 0.4
    flaky = await run(client, workflow("flaky-llm", llm_step("chat", "flaky-500")), {"prompt": "once more"})
    assert flaky.status == task_pb2.TASK_STATUS_COMPLETED, flaky.error
    assert (
        step_states((await client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=flaky.task_id))).task)["ask"].attempts
        == 2
    )


async def test_a_schema_pattern_cannot_hold_the_plugin(client):
    """The schema comes from the step's input and the answer from the model: a pattern that
    backtracks (^(a+)+$ against 40 a's and a '!') is matched by RE2 in linear time, and one RE2
    cannot run is refused before the model is asked."""
    evil = {**SCHEMA, "properties": {**SCHEMA["properties"], "title": {"type": "string", "pattern": "^(a+)+$"}}}
    started = time.monotonic()
    task = await run(
        client,
        workflow("evil-pattern", llm_step("structured", "json-evil", schema=evil, repairs=0)),
        {"prompt": "Name it"},
    )
    assert task.status == task_pb2.TASK_STATUS_FAILED
    assert "INVALID_ARGUMENT" in task.error.message and "answer.title" in task.error.message, task.error.message
    assert time.monotonic() - started < 30  # a backtracking match would still run (and the step time out)
    lookahead = {**SCHEMA, "properties": {"title": {"type": "string", "pattern": "^(?=a)a+$"}}}
    refused = await run(
        client, workflow("lookahead-pattern", llm_step("structured", "json-good", schema=lookahead)), {"prompt": "x"}
    )
    assert refused.status == task_pb2.TASK_STATUS_FAILED
    assert "cannot be matched in linear time" in refused.error.message, refused.error.message
    state = step_states((await client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=refused.task_id))).task)["ask"]
    assert state.attempts == 1 and not state.usage  # refused before the model was asked


def chat_node(node_id: str, prompt: str) -> dict[str, Any]:
    return {"id": node_id, "step": {"protocol": "chat", "input": f"{{'prompt': {prompt}, 'model': 'ok'}}"}}


async def test_the_judge_supervises_a_node_and_the_router_drives_an_adaptive_one(client):
    supervised = {
        "id": "review",
        "supervise": {
            "supervisor": "judge",
            "max_rounds": 3,
            "children": [
                {"id": "draft", "step": {"protocol": "chat", "input": "{'prompt': input.prompt, 'model': 'ok'}"}}
            ],
        },
    }
    data = {"prompt": "Write a line", "criteria": "has a title", "judge_model": "judge-once"}
    task = await run(client, workflow("judged", supervised), data)
    assert task.status == task_pb2.TASK_STATUS_COMPLETED, task.error
    steps = step_states((await client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=task.task_id))).task)
    assert "review/supervisor" in steps and "review/supervisor#2" in steps  # sent back once, then accepted
    assert "review/draft#2" in steps and "review/supervisor#3" not in steps
    rejected = await run(client, workflow("judged-no", supervised), {**data, "judge_model": "judge-reject"})
    assert rejected.status == task_pb2.TASK_STATUS_FAILED and "off topic" in rejected.error.message
    states = [
        {"name": "a", "node": {"id": "a", "step": {"protocol": "chat", "input": "{'prompt': 'go', 'model': 'ok'}"}}},
        {
            "name": "b",
            "terminal": True,
            "node": {"id": "b", "step": {"protocol": "chat", "input": "{'prompt': 'b', 'model': 'ok'}"}},
        },
        {
            "name": "c",
            "terminal": True,
            "node": {"id": "c", "step": {"protocol": "chat", "input": "{'prompt': 'c', 'model': 'ok'}"}},
        },
    ]
    adaptive = {"id": "flow", "adaptive": {"initial_state": "a", "router": "route", "states": states}}
    routed = await run(client, workflow("routed", adaptive), {"router_model": "route-to-b"})
    assert routed.status == task_pb2.TASK_STATUS_COMPLETED, routed.error
    steps = step_states((await client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=routed.task_id))).task)
    assert "flow/b" in steps and "flow/c" not in steps


async def test_tokens_stream_as_progress_with_their_attempt_and_the_output_is_the_whole_text_once(client):
    body = llm_step("chat", "stream-cut")
    body["step"]["stream"] = True
    task = await run(client, workflow("streamed", body), {"prompt": "Greet the world"})
    assert task.status == task_pb2.TASK_STATUS_COMPLETED, task.error
    assert task.result.struct_value.fields["text"].string_value == "Hello world"
    assert dict(task.usage) == {"prompt_tokens": 9, "completion_tokens": 4}
    log = [e async for e in client.tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=task.task_id))]
    kinds = [
        (e.type, e.attempt) for e in log if e.type in (E.TASK_EVENT_TYPE_PROGRESS, E.TASK_EVENT_TYPE_STEP_RETRYING)
    ]
    retried = kinds.index((E.TASK_EVENT_TYPE_STEP_RETRYING, 1))
    # what attempt 1 streamed came before its retry was announced; attempt 2 streamed all of it again
    assert all(attempt == 1 for kind, attempt in kinds[:retried] if kind == E.TASK_EVENT_TYPE_PROGRESS)
    second = [e for e in log if e.type == E.TASK_EVENT_TYPE_PROGRESS and e.attempt == 2]
    assert "".join(e.data.fields["delta"].string_value for e in second) == "Hello world"
    assert all(e.data.fields["attempt"].number_value == 2 for e in second)


async def test_a_model_stream_that_stalls_is_cut_by_the_idle_timeout_and_asked_again(client):
    """The model sends two chunks and then nothing, the connection open: without an idle timeout
    the step would wait for its attempt's deadline (or the HTTP client's, 10 minutes by default)."""
    body = llm_step("chat", "stream-stall")
    body["step"].update({"stream": True, "idle_timeout": "0.5s"})
    task = await run(client, workflow("stalled", body), {"prompt": "Greet the stalled world"}, timeout=20)
    assert task.status == task_pb2.TASK_STATUS_COMPLETED, task.error
    assert task.result.struct_value.fields["text"].string_value == "Hello world"
    log = [e async for e in client.tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=task.task_id))]
    retry = next(e for e in log if e.type == E.TASK_EVENT_TYPE_STEP_RETRYING)
    assert retry.data.fields["code"].string_value == "DEADLINE_EXCEEDED" and "idle_timeout" in retry.message
    took = task.end_time.ToNanoseconds() - task.start_time.ToNanoseconds()
    assert took < 10e9  # cut at the idle timeout, not at the stall's end


async def test_the_llm_review_example_drafts_judges_waits_for_a_person_and_publishes(client):
    definition = yaml.safe_load((Path(__file__).parents[2] / "examples" / "llm_review.yaml").read_text())
    await client.workflows.CreateWorkflow(
        workflow_pb2.CreateWorkflowRequest(workflow=json_format.ParseDict(definition, workflow_pb2.Workflow()))
    )
    request = task_pb2.SubmitTaskRequest(workflow_id="llm-review")
    request.input_data.update({"topic": "tea", "criteria": "has a title", "model": "ok", "judge_model": "judge-once"})
    task = (await client.tasks.SubmitTask(request)).task
    async for event in client.tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=task.task_id)):
        if event.type == E.TASK_EVENT_TYPE_STEP_SUSPENDED and event.step_path == "root/approve":
            break
    signal = task_pb2.SignalTaskRequest(task_id=task.task_id, signal="approval")
    signal.payload.struct_value.update({"approved": True})
    await client.tasks.SignalTask(signal)
    async for _ in client.tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=task.task_id)):
        pass
    done = (await client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=task.task_id))).task
    assert done.status == task_pb2.TASK_STATUS_COMPLETED, done.error
    steps = step_states(done)
    assert "root/review/draft#2" in steps  # the judge sent the draft back once
    assert steps["root/publish"].status == task_pb2.STEP_STATUS_COMPLETED
    assert done.usage["prompt_tokens"] > 0


@pytest.mark.parametrize("streamed", [False, True])
async def test_chat_is_the_model_of_an_agent_whose_tool_answers_join_the_conversation(client, streamed, fake_llm):
    """The llm plugin's chat tells the model of the agent's tools in OpenAI's form, gives back the
    calls it makes (put together from the stream's pieces when it streams), and sends the tool's
    answer in the next round (the fake server quotes it; streamed, it says hello). The model step's
    input forces a call in the first round only (docs/workflows.md: tool_choice by round)."""
    weather = {
        "name": "weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        "node": {"id": "forecast", "step": {"protocol": "echo", "input": "{'sky': 'sunny in ' + prev.city}"}},
    }
    model = {
        "id": "think",
        "step": {
            "protocol": "chat",
            "input": "{'messages': prev.messages, 'tools': prev.tools, 'model': 'tools-weather', 'tool_choice':"
            " prev.messages.exists(m, m.role == 'assistant') ? 'auto' : 'required'}",
            "stream": streamed,
        },
    }
    helper = {
        "id": "helper",
        "agent": {"model": model, "messages": "[{'role': 'user', 'content': input.prompt}]", "tools": [weather]},
    }
    await asyncio.to_thread(urllib.request.urlopen, urllib.request.Request(f"{fake_llm}/reset", method="POST"))
    task = await run(client, workflow("weather-agent", helper), {"prompt": "What is the weather in Paris?"})
    with await asyncio.to_thread(urllib.request.urlopen, f"{fake_llm}/requests") as answer:
        asked = [body for body in json.load(answer) if body.get("model") == "tools-weather"]
    assert [body["tool_choice"] for body in asked] == ["required", "auto"]

    assert task.status == task_pb2.TASK_STATUS_COMPLETED, task.error
    said = "Hello world" if streamed else 'In Paris: {"sky": "sunny in Paris"}'
    assert task.result.struct_value.fields["text"].string_value == said
    both = {"prompt_tokens": 18, "completion_tokens": 8} if streamed else {"prompt_tokens": 22, "completion_tokens": 14}
    assert dict(task.usage) == both  # both rounds
    states = step_states((await client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=task.task_id))).task)
    first = json_format.MessageToDict(states["helper/think"].output)
    assert first["tool_calls"] == [{"id": "call_w1", "name": "weather", "arguments": {"city": "Paris"}}]
    assert json_format.MessageToDict(states["helper/forecast"].output) == {"sky": "sunny in Paris"}
    second = json_format.MessageToDict(states["helper/think#2"].input)["messages"]
    assert [m["role"] for m in second] == ["user", "assistant", "tool"]


async def test_the_agent_example_runs_and_tells_the_model_of_a_tool_it_does_not_have(client):
    """examples/llm_agent.yaml, with the fake server's model, which calls `weather`: the agent
    answers that call with the tools it has, and the model's next round answers."""
    definition = yaml.safe_load((Path(__file__).parents[2] / "examples" / "llm_agent.yaml").read_text())
    wf = json_format.ParseDict(definition, workflow_pb2.Workflow())
    data = {"question": "Who?", "text": "Ada Lovelace worked in London.", "model": "tools-weather"}
    task = await run(client, wf, data)

    assert task.status == task_pb2.TASK_STATUS_COMPLETED, task.error
    text = task.result.struct_value.fields["text"].string_value
    assert text == "In Paris: " + json.dumps(
        {"error": "there is no tool named 'weather'; the tools are: entities, summary, ask_person"}
    )


async def test_embed_gives_one_vector_per_text_in_order_and_a_cached_step_asks_once(client, fake_llm):
    """The fake server answers the vectors out of order, as it may; the plugin puts them back. A
    cache on the step (a RAG pipeline embedding the same passages again) asks the server once."""
    embed = {
        "id": "vectors",
        "step": {"protocol": "embed", "input": "{'input': input.texts, 'model': 'emb'}", "cache": {"ttl": "60s"}},
    }
    texts = ["tea", "a banana", "eee"]
    await asyncio.to_thread(urllib.request.urlopen, urllib.request.Request(f"{fake_llm}/reset", method="POST"))
    first = await run(client, workflow("embedder", embed), {"texts": texts})
    again = await run(client, workflow("embedder", embed), {"texts": texts})

    assert first.status == again.status == task_pb2.TASK_STATUS_COMPLETED, first.error
    out = json_format.MessageToDict(first.result)
    assert out["embeddings"] == [[3, 1, 1, 23], [8, 4, 0, 59], [3, 0, 3, 12]] and out["dimensions"] == 4
    assert out["model"] == "emb" and dict(first.usage) == {"prompt_tokens": 4}
    assert json_format.MessageToDict(again.result) == out and not dict(again.usage)  # from the cache
    with await asyncio.to_thread(urllib.request.urlopen, f"{fake_llm}/requests") as answer:
        assert [body["input"] for body in json.load(answer)] == [texts]


async def test_embed_refuses_what_it_cannot_embed(client):
    cases = {
        "no input": "{'model': 'emb'}",
        "an empty text": "{'input': ['fine', ''], 'model': 'emb'}",
        "a number": "{'input': [1, 2], 'model': 'emb'}",
        "a model that does not embed": "{'input': 'x', 'model': '400'}",
    }
    for name, given in cases.items():
        wf = workflow(f"embed-{len(given)}", {"id": "vectors", "step": {"protocol": "embed", "input": given}})
        task = await run(client, wf, {})
        assert task.status == task_pb2.TASK_STATUS_FAILED, name
        assert task.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0], (name, task.error)
