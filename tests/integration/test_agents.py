"""Agent nodes, on both stores, against the testkit plugin process: a model (testkit's
scripted_model) asked in rounds with the conversation and the tools; each call it makes runs its
tool's node, side by side, as a recorded step; a call of an unknown tool or with arguments the
tool's schema refuses runs nothing and the model is told why; max_rounds bounds the rounds; a
failing tool fails the agent unless a recover node answers for it; a rerun from a tool call keeps
the rounds before it; a bad definition is refused naming the field."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, struct_pb2

from mcp_sdk.proto import task_pb2, workflow_pb2
from tests.helpers import create, refused, run, step, step_states, submit, violations, wait_done, workflow
from tests.integration.test_cancel_cleanup import started
from tests.integration.test_reruns import calls_of, rerun

pytestmark = pytest.mark.asyncio
S = task_pb2.TaskStatus
INPUT = task_pb2.VALUE_FIELD_INPUT
TEXT = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}


def call(call_id: str, name: str, **arguments: Any) -> dict[str, Any]:
    return {"id": call_id, "name": name, "arguments": arguments}


def agent(
    script: list[list[dict[str, Any]]], tools: list[dict[str, Any]] | None = None, **extra: Any
) -> dict[str, Any]:
    """An agent whose model follows `script` (round n makes the calls script[n-1])."""
    messages = "[{'role': 'user', 'content': input.question, 'script': " + json.dumps(script) + "}]"
    return {
        "id": "helper",
        "agent": {
            "model": step("think", "scripted_model"),
            "messages": messages,
            "tools": tools if tools is not None else [lookup(), shout()],
            **extra,
        },
    }


def lookup() -> dict[str, Any]:
    return {"name": "lookup", "description": "Finds a text", "parameters": TEXT, "node": step("find", "append")}


def shout() -> dict[str, Any]:
    return {"name": "shout", "description": "Says it louder", "node": step("loud", "echo", "{'said': prev.text + '!'}")}


async def test_each_round_runs_the_calls_the_model_made_and_the_last_answers(served, testkit):
    _, client = served
    script = [[call("c1", "lookup", text="a"), call("c2", "lookup", text="b")], [call("c3", "shout", text="hey")]]
    done = await run(client, workflow("agent", agent(script)), {"question": "what?"})

    assert done.status == S.TASK_STATUS_COMPLETED, done.error
    result = json_format.MessageToDict(done.result)
    assert result["text"] == "done" and result["rounds"] == 3
    assert [json.loads(answer) for answer in result["answers"]] == [
        {"text": "afind", "trail": ["helper/find"]},
        {"text": "bfind#2", "trail": ["helper/find#2"]},
        {"said": "hey!"},
    ]
    states = step_states(done)
    assert [p for p in states if p.startswith("helper/")] == [
        "helper/think",
        "helper/find",
        "helper/find#2",
        "helper/think#2",
        "helper/loud",
        "helper/think#3",
    ]
    asked = json_format.MessageToDict(states["helper/think#2"].input)
    assert [m["role"] for m in asked["messages"]] == ["user", "assistant", "tool", "tool"]
    assert asked["messages"][1]["tool_calls"][1] == {
        "id": "c2",
        "type": "function",
        "function": {"name": "lookup", "arguments": '{"text": "b"}'},
    }
    assert asked["messages"][3]["tool_call_id"] == "c2" and asked["messages"][3]["name"] == "lookup"
    assert asked["tools"][0] == {"name": "lookup", "description": "Finds a text", "parameters": TEXT}
    assert json_format.MessageToDict(states["helper/find#2"].input) == {"text": "b"}


async def test_an_unknown_tool_or_arguments_the_schema_refuses_run_nothing_and_the_model_is_told(served, testkit):
    _, client = served
    script = [
        [
            call("c1", "search", text="a"),
            call("c2", "lookup", text=3),
            {"id": "c3", "name": "lookup", "arguments": "not json"},
        ]
    ]
    done = await run(client, workflow("told", agent(script)), {"question": "?"})

    assert done.status == S.TASK_STATUS_COMPLETED, done.error
    answers = [json.loads(a)["error"] for a in json_format.MessageToDict(done.result)["answers"]]
    assert answers[0] == "there is no tool named 'search'; the tools are: lookup, shout"
    assert answers[1].startswith("the arguments do not fit the tool's parameters: arguments.text:")
    assert answers[2] == "the arguments must be a JSON object"
    assert not [p for p in step_states(done) if p.startswith("helper/find")]  # nothing ran


async def test_max_rounds_bounds_the_rounds(served):
    _, client = served
    script = [[call(f"c{n}", "shout", text="x")] for n in range(3)]
    done = await run(client, workflow("bounded", agent(script, max_rounds=2)), {"question": "?"})

    assert done.status == S.TASK_STATUS_FAILED
    assert done.error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert done.error.message.endswith("agent helper: the model still called tools after 2 rounds (its max_rounds)")


async def test_a_failing_tool_fails_the_agent_unless_a_recover_node_answers_for_it(served):
    _, client = served
    failing = {"name": "lookup", "node": step("find", "fail", "{'code': 'NOT_FOUND'}")}
    done = await run(client, workflow("fails", agent([[call("c1", "lookup")]], [failing])), {"question": "?"})
    assert done.status == S.TASK_STATUS_FAILED and "NOT_FOUND" in done.error.message

    answered = {
        "name": "lookup",
        "node": {
            "id": "guarded",
            "recover": {
                "body": step("find", "fail", "{'code': 'NOT_FOUND'}"),
                "handler": step("sorry", "echo", "{'error': error.code}"),
            },
        },
    }
    done = await run(client, workflow("answers", agent([[call("c1", "lookup")]], [answered])), {"question": "?"})
    assert done.status == S.TASK_STATUS_COMPLETED, done.error
    assert [json.loads(a) for a in json_format.MessageToDict(done.result)["answers"]] == [{"error": "NOT_FOUND"}]


async def test_a_rerun_from_a_tool_call_keeps_the_rounds_before_it(served, testkit):
    _, client = served
    script = [[call("c1", "lookup", text="a")], [call("c2", "lookup", text="b")], [call("c3", "shout", text="c")]]
    original = await run(client, workflow("again", agent(script)), {"question": "?"})
    assert original.status == S.TASK_STATUS_COMPLETED, original.error

    again = await rerun(client, original.task_id, from_step_path="helper/find#2")

    assert again.status == S.TASK_STATUS_COMPLETED
    assert json_format.MessageToDict(again.result) == json_format.MessageToDict(original.result)
    assert await calls_of(testkit, again.task_id) == {
        "helper/find#2": 1,
        "helper/think#3": 1,
        "helper/loud": 1,
        "helper/think#4": 1,
    }
    states = step_states(again)
    assert states["helper/think"].reused and states["helper/find"].reused and states["helper/think#2"].reused


async def test_a_bad_agent_is_refused_naming_each_field(served):
    _, client = served
    bad = {
        "id": "helper",
        "agent": {
            "tools": [
                {"name": "look up", "node": step("a", "echo")},
                {"name": "x", "parameters": {"type": "string"}, "node": step("b", "echo")},
                {"name": "x", "node": step("c", "echo")},
                {"name": "y", "description": "d" * 1025},
            ],
            "max_rounds": 11,
        },
    }
    error = await refused(
        client.workflows.CreateWorkflow(workflow_pb2.CreateWorkflowRequest(workflow=workflow("bad", bad)))
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(error) == {
        "workflow.root.agent.model": "an agent node needs a model: the node asked each round",
        "workflow.root.agent.messages": "is required: CEL giving the conversation to start with",
        "workflow.root.agent.tools[0].name": "must be 1-64 letters, digits, '_' or '-' (what a model calls it by)",
        "workflow.root.agent.tools[1].parameters": "must describe an object: a call's arguments are one",
        "workflow.root.agent.tools[2].name": "duplicate tool name 'x'",
        "workflow.root.agent.tools[3].description": "is 1025 characters; at most 1024",
        "workflow.root.agent.tools[3].node": "a tool needs a node: what runs a call",
        "workflow.root.agent.max_rounds": "must be between 1 and 10 (0 means 10)",
    }


async def test_the_calls_of_one_round_run_side_by_side(served, testkit):
    _, client = served
    slow = {"name": "nap", "node": step("nap", "sleep", "{'ms': 600}")}
    script = [[call(f"c{i}", "nap") for i in range(4)]]
    await create(client, workflow("naps", agent(script, [slow])))
    task = await submit(client, "naps", {"question": "?"})
    done = await wait_done(client, task.task_id)
    assert done.status == S.TASK_STATUS_COMPLETED, done.error
    naps = [state for path, state in step_states(done).items() if path.startswith("helper/nap")]
    assert len(naps) == 4
    last_start = max(state.start_time.ToNanoseconds() for state in naps)
    assert last_start < min(state.end_time.ToNanoseconds() for state in naps)  # all four began before any ended


async def test_a_cancelled_agent_is_walked_by_the_clean_up_of_the_recover_node_around_it(parking_server, testkit):
    _, client = parking_server
    slow = {"name": "nap", "node": step("nap", "sleep", "{'ms': 10000}")}
    script = [[call("c1", "shout", text="x")], [call("c2", "nap")]]
    guarded = {
        "id": "r",
        "recover": {"body": agent(script, [shout(), slow]), "handler": step("undo", "echo"), "on_cancel": True},
    }
    await create(client, workflow("undoable", guarded))
    task = await submit(client, "undoable", {"question": "?"})
    await started(client, task.task_id, "r/helper/nap")
    await client.tasks.CancelTask(task_pb2.CancelTaskRequest(task_id=task.task_id, reason="stop"))
    done = await wait_done(client, task.task_id)

    assert done.status == S.TASK_STATUS_CANCELLED and done.cancel_request.outcome == "done"
    states = step_states(done)
    assert states["r/undo"].status == task_pb2.STEP_STATUS_COMPLETED
    assert states["r/helper/nap"].status == task_pb2.STEP_STATUS_CANCELLED
    assert states["r/helper/think#2"].status == task_pb2.STEP_STATUS_COMPLETED  # replayed, not asked again
    assert "r/helper/think#3" not in states
    assert (await calls_of(testkit, task.task_id))["r/helper/think"] == 1


async def test_a_budget_stops_the_agent_before_it_asks_its_model_again(served, testkit):
    _, client = served
    spend = {"name": "spend", "node": step("spend", "metered", "{'usage': {'cost_usd': 0.3}}")}
    script = [[call(f"c{n}", "spend")] for n in range(5)]
    done = await run(client, workflow("budgeted", agent(script, [spend], budget={"cost_usd": 0.5})), {"question": "?"})

    assert done.status == S.TASK_STATUS_FAILED
    assert done.error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert done.error.message.endswith("agent helper: its steps used 0.6 cost_usd of its budget of 0.5")
    assert await calls_of(testkit, done.task_id) == {
        "helper/think": 1,
        "helper/spend": 1,
        "helper/think#2": 1,
        "helper/spend#2": 1,
    }
    assert dict(done.usage) == {"cost_usd": pytest.approx(0.6)}

    bad = agent(script, [spend], budget={"cost_usd": -1, "tokens\n": 5})
    error = await refused(
        client.workflows.CreateWorkflow(workflow_pb2.CreateWorkflowRequest(workflow=workflow("b", bad)))
    )
    assert violations(error) == {
        "workflow.root.agent.budget['cost_usd']": "must be a number above 0",
        "workflow.root.agent.budget['tokens\\n']": "a usage name is 1-128 characters, none a control character",
    }


async def test_a_rerun_on_a_version_whose_agent_has_other_tools_is_refused(served, testkit):
    _, client = served
    script = [[call("c1", "lookup", text="a")], [call("c2", "shout", text="b")]]
    original = await run(client, workflow("versions", agent(script)), {"question": "?"})
    assert original.status == S.TASK_STATUS_COMPLETED, original.error
    stricter = {**shout(), "parameters": TEXT}
    await create(client, workflow("versions", agent(script, [lookup(), stricter])))  # version 2

    error = await refused(
        client.tasks.RerunTask(
            task_pb2.RerunTaskRequest(task_id=original.task_id, from_step_path="helper/loud", workflow_version=2)
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    why = "its tools (names or parameters) differ, so its kept calls could stand for others"
    assert violations(error) == {"workflow_version": f"step helper: {why}"}
    mended = {**lookup(), "node": step("find", "append", "{'text': prev.text, 'suffix': '?'}")}
    await create(client, workflow("versions", agent(script, [mended, shout()])))  # version 3: same tools
    again = await rerun(client, original.task_id, from_step_path="helper/loud", workflow_version=3)
    assert again.status == S.TASK_STATUS_COMPLETED, again.error


async def test_a_failing_call_cancels_the_other_calls_of_its_round(served, testkit):
    _, client = served
    tools = [
        {"name": "nap", "node": step("nap", "sleep", "{'ms': 20000}")},
        {"name": "lookup", "node": step("find", "fail", "{'code': 'NOT_FOUND'}")},
    ]
    script = [[call("c1", "nap"), call("c2", "lookup")]]
    started = asyncio.get_running_loop().time()
    done = await run(client, workflow("fast-fail", agent(script, tools)), {"question": "?"})

    assert done.status == S.TASK_STATUS_FAILED and "NOT_FOUND" in done.error.message
    assert asyncio.get_running_loop().time() - started < 15  # not after the 20 s nap
    states = step_states(done)
    assert states["helper/nap"].status == task_pb2.STEP_STATUS_CANCELLED
    assert states["helper/find"].status == task_pb2.STEP_STATUS_FAILED


async def read_value(client, task_id: str, step_path: str, field: int) -> Any:
    request = task_pb2.ReadValueRequest(task_id=task_id, step_path=step_path, field=field)
    data = b"".join([chunk.data async for chunk in client.tasks.ReadValue(request)])
    return json_format.MessageToDict(struct_pb2.Value.FromString(data))


async def test_a_long_conversation_is_stored_in_chunks_and_reads_back_whole_after_its_source_is_deleted(
    served, testkit
):
    await long_conversation_reads_back(served[1], testkit)


async def long_conversation_reads_back(client, testkit) -> None:
    """An agent asked five times with a conversation that grows by 100 KB a round: each round's
    input reads back whole, a rerun keeps the rounds before its call, and its source's deletion
    leaves the rerun's kept values readable (their chunks copied to it)."""
    script = [[call(f"c{n}", "fetch", bytes=100_000, tag=f"file{n}")] for n in range(1, 6)]
    tools = [{"name": "fetch", "description": "Reads a file", "node": step("read", "sized")}]
    original = await run(client, workflow("long-talk", agent(script, tools)), {"question": "?"})
    assert original.status == S.TASK_STATUS_COMPLETED, original.error
    answered = await read_value(client, original.task_id, "", task_pb2.VALUE_FIELD_OUTPUT)  # 500 KB: by reference
    assert [json.loads(a)["tag"] for a in answered["answers"]] == [f"file{n}" for n in range(1, 6)]
    asked = {n: await read_value(client, original.task_id, f"helper/think#{n}", INPUT) for n in (3, 6)}
    assert [m["role"] for m in asked[6]["messages"]] == ["user"] + ["assistant", "tool"] * 5
    tool_answers = [json.loads(m["content"]) for m in asked[6]["messages"] if m["role"] == "tool"]
    assert [a["tag"] for a in tool_answers] == [f"file{n}" for n in range(1, 6)]
    assert all(len(a["data"]) > 99_000 for a in tool_answers)

    again = await rerun(client, original.task_id, from_step_path="helper/read#4")
    assert again.status == S.TASK_STATUS_COMPLETED, again.error
    assert await calls_of(testkit, again.task_id) == {
        "helper/read#4": 1,
        "helper/think#5": 1,
        "helper/read#5": 1,
        "helper/think#6": 1,
    }
    await client.tasks.DeleteTask(task_pb2.DeleteTaskRequest(task_id=original.task_id))
    assert await read_value(client, again.task_id, "helper/think#3", INPUT) == asked[3]  # kept, from the deleted
    assert await read_value(client, again.task_id, "helper/think#6", INPUT) == asked[6]
    assert await read_value(client, again.task_id, "", task_pb2.VALUE_FIELD_OUTPUT) == answered


async def cli(address: str, *args: str) -> tuple[int, str, str]:
    """`mcp --server ADDRESS ARGS...` as a process: its exit status, output and errors."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mcp_server.cli.main",
        "--server",
        address,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "COLUMNS": "300"},
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode or 0, out.decode(), err.decode()


async def test_the_cli_prints_what_the_model_was_last_asked_turn_by_turn_and_its_answer(served, testkit):
    running, client = served
    script = [[call("c1", "lookup", text="a"), call("c2", "shout", text="hey")]]
    done = await run(client, workflow("talkative", agent(script)), {"question": "what is it? " + "q" * 3000})
    assert done.status == S.TASK_STATUS_COMPLETED, done.error

    code, out, _ = await cli(running.address, "task", "conversation", done.task_id)
    lines = [" ".join(line.split()) for line in out.splitlines()]
    assert code == 0 and lines == [
        "agent helper COMPLETED, 2 round(s); what helper/think#2 was asked, and its answer",
        "user: what is it? " + "q" * 1988 + "... (1012 more characters)",
        'assistant calls: lookup {"text": "a"} [c1]',
        'assistant calls: shout {"text": "hey"} [c2]',
        'tool lookup [c1]: {"text": "afind", "trail": ["helper/find"]}',
        'tool shout [c2]: {"said": "hey!"}',
        "answer: done",
    ]
    code, out, _ = await cli(running.address, "task", "conversation", done.task_id, "--full")
    assert code == 0 and "what is it? " + "q" * 3000 + "\n" in out
    code, out, _ = await cli(running.address, "--json", "task", "conversation", done.task_id)
    (talk,) = json.loads(out)["conversations"]
    assert [m["role"] for m in talk["messages"]] == ["user", "assistant", "tool", "tool"]
    assert talk["answer"]["text"] == "done" and talk["rounds"] == 2 and talk["round_path"] == "helper/think#2"
    code, _, err = await cli(running.address, "task", "conversation", done.task_id, "--agent", "elsewhere")
    assert code == 1 and "has no agent at elsewhere" in err


async def test_a_timeout_around_an_agent_leaves_none_of_its_calls_running(served, testkit):
    _, client = served
    tools = [{"name": "nap", "node": step("nap", "sleep", "{'ms': 20000}")}, shout()]
    script = [[call("c1", "nap"), call("c2", "shout", text="x")]]
    bounded = {"id": "outer", "sequence": {"children": [agent(script, tools)]}, "timeout": "0.5s"}
    done = await run(client, workflow("cut-short", bounded), {"question": "?"})

    assert done.status == S.TASK_STATUS_FAILED and done.error.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    states = step_states(done)
    assert states["outer/helper/nap"].status == task_pb2.STEP_STATUS_CANCELLED  # recorded before the task ended
    assert states["outer/helper/loud"].status == task_pb2.STEP_STATUS_COMPLETED
    assert states["outer/helper"].status == task_pb2.STEP_STATUS_CANCELLED
    assert not [path for path, state in states.items() if state.status == task_pb2.STEP_STATUS_RUNNING]
