"""An agent node's conversation: what its model was last asked (the whole conversation so far)
and what it answered, read from the task's steps, for `mcp task conversation` and the console.

An agent asks its model node at `<agent>/<model id>`, then `#2`, `#3`...; the latest round's input
holds every turn before it (the question, each of the model's turns with its calls, each tool's
answer), and its output the model's latest turn. A round's input above the inline limit is read
with ReadValue.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mcp_sdk.proto import task_pb2, workflow_pb2
from mcp_sdk.values import value_to_python
from mcp_sdk.workflow_tree import default_node_id, node_at

if TYPE_CHECKING:
    from mcp_sdk.client import Client


@dataclass(frozen=True)
class Conversation:
    """One agent's conversation, as of its latest round."""

    agent_path: str
    status: str  # the agent step's, e.g. COMPLETED
    rounds: int  # the model rounds that began
    round_path: str  # the latest round's step path ("" before the first)
    messages: list[Any]  # what that round asked the model
    answer: Any  # what the model answered in it (None while it has not)
    unread_bytes: int = 0  # the size of what was not read, being above the `max_bytes` asked for

    def to_json(self) -> dict[str, Any]:
        return {
            "agent_path": self.agent_path,
            "status": self.status,
            "rounds": self.rounds,
            "round_path": self.round_path,
            "messages": self.messages,
            "answer": self.answer,
            "unread_bytes": self.unread_bytes,
        }


def latest_rounds(
    steps: Sequence[task_pb2.StepState], root: workflow_pb2.Node
) -> list[tuple[task_pb2.StepState, task_pb2.StepState | None, int]]:
    """Each agent step of the task (in step order) with its latest model round's step (None before
    the first) and how many rounds began. An agent whose node the definition does not hold (a
    subworkflow stored apart) is left out."""
    found = []
    for step in steps:
        if step.kind != "agent":
            continue
        node = node_at(root, step.path)
        if node is None or not node.agent.HasField("model"):
            continue
        prefix = f"{step.path}/{node.agent.model.id or default_node_id(node.agent.model, 0)}"
        rounds = {_round_of(s.path, prefix): s for s in steps if s.path == prefix or s.path.startswith(prefix + "#")}
        rounds.pop(0, None)
        latest = max(rounds) if rounds else 0
        found.append((step, rounds.get(latest), latest))
    return found


async def conversations(
    client: Client,
    task_id: str,
    steps: Sequence[task_pb2.StepState],
    root: workflow_pb2.Node,
    agent_path: str = "",
    *,
    max_agents: int | None = None,
    max_bytes: int | None = None,
) -> list[Conversation]:
    """The conversations of the task's agents (only the one at `agent_path`, if given; the first
    `max_agents`), a round's input or output above `max_bytes` left unread (its size kept); their
    values are read side by side."""
    chosen = [found for found in latest_rounds(steps, root) if not agent_path or found[0].path == agent_path]
    agents = chosen[:max_agents] if max_agents is not None else chosen
    return list(await asyncio.gather(*(_conversation(client, task_id, *found, max_bytes) for found in agents)))


async def _conversation(
    client: Client,
    task_id: str,
    agent: task_pb2.StepState,
    latest: task_pb2.StepState | None,
    rounds: int,
    max_bytes: int | None,
) -> Conversation:
    messages: list[Any] = []
    answer: Any = None
    unread = 0
    if latest is not None:
        asked, unread = await _value(client, task_id, latest, "input", max_bytes)
        listed = asked.get("messages") if isinstance(asked, dict) else None
        messages = list(listed) if isinstance(listed, list) else []
        if latest.status == task_pb2.STEP_STATUS_COMPLETED:
            answer, unread_answer = await _value(client, task_id, latest, "output", max_bytes)
            unread += unread_answer
    status = task_pb2.StepStatus.Name(agent.status).removeprefix("STEP_STATUS_")
    return Conversation(agent.path, status, rounds, latest.path if latest else "", messages, answer, unread)


def transcript(conversation: Conversation, limit: int | None = None) -> list[tuple[str, str]]:
    """The conversation as (who, text) lines: each turn's text and one line per call it made (`user`,
    `assistant calls`, `tool NAME [ID]`...), then the model's answer (`answer`, `answer calls`);
    each text cut at `limit` characters."""
    lines = [line for turn in conversation.messages for line in _turn_lines(turn, limit)]
    return lines + (_answer_lines(conversation.answer, limit) if conversation.answer is not None else [])


def _turn_lines(turn: Any, limit: int | None) -> list[tuple[str, str]]:
    """A turn as (who, text) lines: its text, then one line per call it made."""
    if not isinstance(turn, dict):
        return [("?", _clip(_text(turn), limit))]
    role = str(turn.get("role") or "?")
    if role == "tool":
        call_id = turn.get("tool_call_id")
        role = " ".join(str(part) for part in ("tool", turn.get("name"), call_id and f"[{call_id}]") if part)
    lines = [(role, _clip(_text(turn.get("content")), limit))] if turn.get("content") not in (None, "") else []
    for call in turn.get("tool_calls") or []:
        lines.append((f"{role} calls", _clip(call_text(call), limit)))
    return lines or [(role, "")]


def call_text(call: Any) -> str:
    """`name {"arguments"} [id]`, from OpenAI's form ({id, function: {name, arguments}}) or ours."""
    if not isinstance(call, dict):
        return _text(call)
    function: dict[str, Any] = call["function"] if isinstance(call.get("function"), dict) else call
    arguments = function.get("arguments")
    shown = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False, sort_keys=True)
    return f"{function.get('name', '?')} {shown} [{call.get('id', '')}]"


def _answer_lines(answer: Any, limit: int | None) -> list[tuple[str, str]]:
    """The model's latest turn: its text and its calls (from `chat`'s output, or any model's)."""
    if not isinstance(answer, dict):
        return [("answer", _clip(_text(answer), limit))]
    lines = [("answer", _clip(_text(answer.get("text")), limit))] if answer.get("text") else []
    lines += [("answer calls", _clip(call_text(call), limit)) for call in answer.get("tool_calls") or []]
    return lines or [("answer", _clip(_text(answer), limit))]


def _round_of(path: str, prefix: str) -> int:
    """The round a model step's path names (`think` 1, `think#3` 3); 0 for none."""
    suffix = path[len(prefix) :]
    if not suffix:
        return 1
    number = suffix.removeprefix("#")
    return int(number) if number.isdigit() else 0


async def _value(
    client: Client, task_id: str, step: task_pb2.StepState, name: str, max_bytes: int | None
) -> tuple[Any, int]:
    """A step's input or output (inline in its state, or read by reference), and 0; or None and
    its size when it is above `max_bytes`."""
    if step.HasField(name):
        return value_to_python(getattr(step, name)), 0
    ref = getattr(step, f"{name}_ref")
    if not ref.sha256:
        return None, 0
    if max_bytes is not None and ref.size_bytes > max_bytes:
        return None, ref.size_bytes
    field = task_pb2.VALUE_FIELD_INPUT if name == "input" else task_pb2.VALUE_FIELD_OUTPUT
    return await client.read_value(task_id, step.path, field), 0


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)


def _clip(text: str, limit: int | None) -> str:
    if limit is None or len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"
