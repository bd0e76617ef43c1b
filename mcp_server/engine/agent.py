"""Agent nodes: a model that calls tools, in rounds (AgentNode in workflow.proto).

Round n asks the model node (at `<agent>/<model id>#n`) with {messages, tools}. Each of its
answer's `tool_calls` ({id, name, arguments}) runs the node of the tool it names, side by side,
the k-th call of a tool at `<agent>/<tool node id>#k`; the answer's `message` and one
`{role: tool, tool_call_id, name, content}` per call join the conversation, and round n+1 asks
again. The first round that calls no tool ends the node with the model's answer.

Every model call and tool call is a recorded step, so a run resumed after a crash (or a rerun)
replays the finished rounds from their outputs, which rebuilds the same conversation, and goes
on from the first call that had not finished. A call of an unknown tool, or with arguments the
tool's schema refuses, runs nothing: the model is told why in that call's answer, and may mend it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mcp_server.engine.cancelling import cancel_all
from mcp_server.engine.cleanup_replay import replaying
from mcp_server.engine.context import NodeFailed, NodeResult, RunContext
from mcp_server.engine.executor import child_path, evaluate, execute, runs
from mcp_server.engine.payload import Payload
from mcp_server.engine.plan import AgentPlan, AgentToolPlan
from mcp_server.engine.schemas import problems_off_loop

MAX_CALLS_PER_ROUND = 64


@dataclass(frozen=True)
class ToolCall:
    """One call the model asked for, as the conversation records it."""

    id: str
    name: str
    arguments: Any  # an object when the model gave a valid one


@runs("agent")
async def run_agent(
    node: AgentPlan, path: str, value: Payload, ctx: RunContext, scope: Mapping[str, Any]
) -> NodeResult:
    messages = evaluate(node.messages, ctx, value, scope, node.id, "messages")
    if not isinstance(messages, list):
        raise NodeFailed(
            "INVALID_ARGUMENT", f"agent {node.id}: messages must give a list, not {type(messages).__name__}"
        )
    tools = [{"name": t.name, "description": t.description, "parameters": t.parameters} for t in node.tools]
    calls_so_far: dict[str, int] = {}  # the calls of each tool in the rounds before: the k of its next path
    for round_ in range(1, node.max_rounds + 1):
        _within_budget(node, path, ctx)
        asked = Payload.of_python({"messages": messages, "tools": tools})
        answer = await execute(node.model, child_path(path, node.model.id, round_), asked, ctx, scope)
        said = answer.output.python()
        calls = _calls(said, node.id, round_)
        if not calls:
            return NodeResult(answer.output)
        answers = await _run_calls(node, path, calls, calls_so_far, ctx, scope)
        messages = [*messages, _assistant_turn(said, calls), *answers]
    raise NodeFailed(
        "RESOURCE_EXHAUSTED",
        f"agent {node.id}: the model still called tools after {node.max_rounds} rounds (its max_rounds)",
    )


def _within_budget(node: AgentPlan, path: str, ctx: RunContext) -> None:
    """Fail the node, rather than ask the model again, once what its steps used reaches a cap."""
    if not node.budget:
        return
    used = ctx.usage_within(path)
    for name, cap in node.budget:
        if used.get(name, 0.0) >= cap:
            raise NodeFailed(
                "RESOURCE_EXHAUSTED",
                f"agent {node.id}: its steps used {used[name]:g} {name} of its budget of {cap:g}",
            )


async def _run_calls(
    node: AgentPlan,
    path: str,
    calls: Sequence[ToolCall],
    calls_so_far: dict[str, int],
    ctx: RunContext,
    scope: Mapping[str, Any],
) -> list[dict[str, Any]]:
    """Run one round's calls side by side; their answers, in call order, as tool messages. A call
    whose node fails fails the agent, and the round's other calls are cancelled."""
    by_name = {tool.name: tool for tool in node.tools}
    # every refusal before any call starts: nothing may await between a call's start and the
    # gather that cancels it with the agent
    refusals = [await _refusal(call, by_name.get(call.name), node) for call in calls]
    pending: list[asyncio.Future[Any]] = []
    for call, refusal in zip(calls, refusals, strict=True):
        tool = by_name.get(call.name)
        if tool is None or refusal:
            pending.append(_done({"error": refusal}))
            continue
        calls_so_far[tool.name] = calls_so_far.get(tool.name, 0) + 1
        at = child_path(path, tool.node.id, calls_so_far[tool.name])
        pending.append(asyncio.ensure_future(_run_tool(tool, at, call.arguments, ctx, scope)))
    results = await (_every_end(pending) if replaying() is not None else _until_one_fails(pending))
    return [
        {"role": "tool", "tool_call_id": call.id, "name": call.name, "content": _json(result)}
        for call, result in zip(calls, results, strict=True)
    ]


async def _until_one_fails(pending: Sequence[asyncio.Future[Any]]) -> list[Any]:
    """The calls' results; once one fails, the others are cancelled and the first failure (in call
    order) is raised. Cancelled itself (the task, a park, a timeout around it), it cancels them
    all and waits until each has recorded its cancel, so none is left running in the record."""
    try:
        await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
    except BaseException:
        await cancel_all(pending)
        raise
    errors = [call.exception() for call in pending if call.done() and not call.cancelled()]
    if first := next((error for error in errors if error is not None), None):
        await cancel_all(pending)
        raise first
    return [call.result() for call in pending]


async def _every_end(pending: Sequence[asyncio.Future[Any]]) -> list[Any]:
    """A clean-up's walk: every call replayed to its end (a call's own clean-up is not cut short
    by another's cancel), then the first failure raised."""
    results = await asyncio.gather(*pending, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


async def _run_tool(tool: AgentToolPlan, at: str, arguments: Any, ctx: RunContext, scope: Mapping[str, Any]) -> Any:
    return (await execute(tool.node, at, Payload.of_python(arguments), ctx, scope)).output.python()


def _done(result: Any) -> asyncio.Future[Any]:
    done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    done.set_result(result)
    return done


async def _refusal(call: ToolCall, tool: AgentToolPlan | None, node: AgentPlan) -> str:
    """Why `call` runs nothing ("" when it runs): what the model is told instead of an answer."""
    if tool is None:
        names = ", ".join(t.name for t in node.tools) or "none"
        return f"there is no tool named {call.name!r}; the tools are: {names}"
    if not isinstance(call.arguments, dict):
        return "the arguments must be a JSON object"
    if tool.schema is not None and (problems := await problems_off_loop(tool.schema, call.arguments, "arguments")):
        return "the arguments do not fit the tool's parameters: " + "; ".join(
            f"{at}: {why}" for at, why in problems[:5]
        )
    return ""


def _calls(said: Any, agent_id: str, round_: int) -> list[ToolCall]:
    """The calls the model's answer asks for (none: the last round)."""
    if not isinstance(said, dict):
        raise NodeFailed(
            "INVALID_ARGUMENT", f"agent {agent_id}: the model answered a {type(said).__name__}, not an object"
        )
    asked = said.get("tool_calls") or []
    if not isinstance(asked, list) or not all(isinstance(call, dict) for call in asked):
        raise NodeFailed("INVALID_ARGUMENT", f"agent {agent_id}: the model's tool_calls must be a list of objects")
    if len(asked) > MAX_CALLS_PER_ROUND:
        raise NodeFailed(
            "INVALID_ARGUMENT",
            f"agent {agent_id}: the model asked for {len(asked)} calls in one round; at most {MAX_CALLS_PER_ROUND}",
        )
    calls = []
    for i, call in enumerate(asked):
        arguments = call.get("arguments", {})
        if isinstance(arguments, str):  # as OpenAI's API gives them: JSON in a string
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except json.JSONDecodeError:
                pass  # refused as not an object: the model is told
        calls.append(ToolCall(str(call.get("id") or f"call_{round_}_{i}"), str(call.get("name", "")), arguments))
    return calls


def _assistant_turn(said: dict[str, Any], calls: Sequence[ToolCall]) -> Any:
    """The model's turn as the conversation keeps it: its own `message`, or one in OpenAI's form."""
    if isinstance(said.get("message"), dict):
        return said["message"]
    return {
        "role": "assistant",
        "content": said.get("text") or None,
        "tool_calls": [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": _json(call.arguments)},
            }
            for call in calls
        ],
    }


def _json(value: Any) -> str:
    """`value` as the conversation's text, the same in every life of the run: an object read back
    from the store has its keys in another order than the plugin's answer had."""
    return json.dumps(value, ensure_ascii=False, sort_keys=True)
