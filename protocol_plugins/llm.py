"""llm: language-model protocols for any OpenAI-compatible server (vLLM, llama.cpp's server,
Ollama, LM Studio, a LiteLLM proxy, OpenAI), set by MCP_LLM_BASE_URL, MCP_LLM_API_KEY and
MCP_LLM_MODEL. The engine is the only retry layer: the client's own retries are off, and each
provider error is mapped once to the status the engine retries by (llm_errors.py).

- `chat`: {messages | prompt, system, model, temperature, max_tokens, stop, seed, tools,
  tool_choice} -> {text, model, finish_reason, usage} and, when the model calls tools, `tool_calls`
  ({id, name, arguments}) and `message` (its turn, to send back): the model of an agent node; on
  a step with `stream: true` the tokens go out as they come (PROGRESS events with `delta` and
  `attempt`, at most every 50 ms), the output is the whole text once
- `structured`: the same with a JSON `schema` -> the parsed object; the server is asked for
  that JSON schema, the answer is validated (jsonschema, its patterns matched by RE2 in linear
  time, as the engine's wait schemas are) and, when it does not fit, asked again with the
  validation errors, at most `repairs` times (default 2); an answer cut at max_tokens
  is its own error (OUT_OF_RANGE), never retried blindly.
- `embed`: {input (a text or a list of texts), model, dimensions} -> {embeddings, dimensions,
  model, usage}: one vector per text, in order.
- `judge` (a supervisor): the model judges a supervise node's children against `criteria` and
  accepts, retries them with feedback, or rejects.
- `route` (a router): the model picks an adaptive node's next state.

Every call reports its usage (prompt_tokens, completion_tokens) with its answer.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import grpc
import httpx
import openai

from mcp_sdk.plugin import Context, Plugin, ProtocolError, Reply, accept, fail, goto, retry
from mcp_sdk.proto import protocol_pb2
from mcp_server.engine.schemas import PayloadSchema, SchemaInvalid, compile_schema
from protocol_plugins.llm_errors import provider_error

plugin = Plugin("llm")
T = protocol_pb2
S = grpc.StatusCode
CONNECT_SECONDS = 5.0
READ_SECONDS = 60.0  # between two chunks of the answer
DEFAULT_SECONDS = 600.0  # the whole call, when the engine set no attempt deadline
MAX_REPAIRS = 5
COALESCE_SECONDS = 0.05  # tokens go out at most this often
_client: openai.AsyncOpenAI | None = None


def client() -> openai.AsyncOpenAI:
    global _client
    if _client is None:
        _client = openai.AsyncOpenAI(
            base_url=os.environ.get("MCP_LLM_BASE_URL") or None,
            api_key=os.environ.get("MCP_LLM_API_KEY") or "not-needed",
            max_retries=0,  # the engine retries, with its policy and its events
            timeout=httpx.Timeout(DEFAULT_SECONDS, connect=CONNECT_SECONDS, read=READ_SECONDS),
        )
    return _client


def messages_of(data: dict[str, Any]) -> list[dict[str, Any]]:
    messages = [_sendable(m) for m in data.get("messages") or []]
    if not messages:
        prompt = data.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise ValueError("give `messages` (a list of {role, content}) or `prompt` (a string)")
        messages = [{"role": "user", "content": prompt}]
    if data.get("system"):
        messages = [{"role": "system", "content": str(data["system"])}, *messages]
    if data.get("feedback"):  # a supervisor sent the step back: its feedback is the next turn
        messages = [*messages, {"role": "user", "content": f"Revise your answer. Feedback: {data['feedback']}"}]
    return messages


def _sendable(message: Any) -> Any:
    """A message as OpenAI's API takes it: an agent's tool answers carry the tool's `name` too,
    which its `tool` role does not have."""
    if isinstance(message, dict) and message.get("role") == "tool":
        return {k: v for k, v in message.items() if k in ("role", "content", "tool_call_id")}
    return message


def tools_of(data: dict[str, Any]) -> dict[str, Any]:
    """`tools` ({name, description, parameters}, as an agent node gives them) and `tool_choice`
    in OpenAI's form; {} without tools."""
    tools = data.get("tools") or []
    if not isinstance(tools, list) or not all(isinstance(t, dict) and t.get("name") for t in tools):
        raise ValueError("`tools` must be a list of {name, description, parameters}")
    if not tools:
        return {}
    functions = [
        {
            "type": "function",
            "function": {
                "name": str(t["name"]),
                "description": str(t.get("description", "")),
                "parameters": t.get("parameters") or {"type": "object"},
            },
        }
        for t in tools
    ]
    options: dict[str, Any] = {"tools": functions}
    if data.get("tool_choice") is not None:
        options["tool_choice"] = data["tool_choice"]
    return options


def answer_of(text: str, model: str, finish: str, calls: list[dict[str, Any]], ctx: Context) -> dict[str, Any]:
    """The chat output: the text and, when the model called tools, the calls (arguments parsed
    where they are JSON) and its turn as it must be sent back."""
    answer: dict[str, Any] = {"text": text, "model": model, "finish_reason": finish, "usage": dict(ctx.usage)}
    if calls:
        answer["tool_calls"] = [{"id": c["id"], "name": c["name"], "arguments": _parsed(c["arguments"])} for c in calls]
        answer["message"] = {
            "role": "assistant",
            "content": text or None,
            "tool_calls": [
                {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                for c in calls
            ],
        }
    return answer


def _parsed(arguments: str) -> Any:
    try:
        return json.loads(arguments) if arguments.strip() else {}
    except json.JSONDecodeError:
        return arguments  # the agent tells the model they are not an object


def options_of(data: dict[str, Any], ctx: Context) -> dict[str, Any]:
    options: dict[str, Any] = {"model": data.get("model") or os.environ.get("MCP_LLM_MODEL") or "default"}
    for name in ("temperature", "max_tokens", "stop", "seed"):
        if data.get(name) is not None:
            options[name] = int(data[name]) if name in ("max_tokens", "seed") else data[name]
    remaining = ctx.time_remaining()
    if remaining is not None:  # the attempt's deadline ends the HTTP request too
        options["timeout"] = httpx.Timeout(remaining, connect=min(CONNECT_SECONDS, remaining), read=READ_SECONDS)
    return options


async def complete(messages: list[dict[str, Any]], options: dict[str, Any], ctx: Context) -> Any:
    try:
        create: Any = client().chat.completions.create  # its overloads type each model name and message kind
        response = await create(messages=messages, **options)
    except openai.OpenAIError as exc:
        raise provider_error(exc) from None
    if response.usage is not None:
        ctx.report_usage(
            prompt_tokens=response.usage.prompt_tokens or 0, completion_tokens=response.usage.completion_tokens or 0
        )
    if not response.choices:
        raise ProtocolError(S.UNAVAILABLE, "the model server answered with no choice")
    return response


@plugin.protocol(
    "chat", type=T.PROTOCOL_TYPE_GENERATION, description="A chat completion: {text, model, finish_reason, usage}"
)
async def chat(data: dict[str, Any], ctx: Context) -> dict[str, Any]:
    options = {**options_of(data, ctx), **tools_of(data)}
    if ctx.streaming:
        return await stream_chat(messages_of(data), options, ctx)
    response = await complete(messages_of(data), options, ctx)
    choice = response.choices[0]
    calls = [
        {"id": c.id, "name": c.function.name, "arguments": c.function.arguments or ""}
        for c in choice.message.tool_calls or []
        if getattr(c, "function", None) is not None
    ]
    return answer_of(choice.message.content or "", response.model, choice.finish_reason or "", calls, ctx)


async def stream_chat(messages: list[dict[str, Any]], options: dict[str, Any], ctx: Context) -> dict[str, Any]:
    """A chat completion streamed: the tokens go out as progress (coalesced, at most one report
    every COALESCE_SECONDS, each with its attempt), the output is the whole text once."""
    parts: list[str] = []
    pending: list[str] = []
    calls: dict[int, dict[str, Any]] = {}  # the tool calls, put together from their deltas by index
    finish, model = "", ""
    sent = time.monotonic()
    try:
        create: Any = client().chat.completions.create  # its overloads type each model name and message kind
        stream = await create(
            messages=messages,
            stream=True,
            stream_options={"include_usage": True},
            **options,
        )
        async for chunk in stream:
            model = chunk.model or model
            if chunk.usage is not None:
                ctx.report_usage(
                    prompt_tokens=chunk.usage.prompt_tokens or 0, completion_tokens=chunk.usage.completion_tokens or 0
                )
            for choice in chunk.choices:
                if choice.delta.content:
                    parts.append(choice.delta.content)
                    pending.append(choice.delta.content)
                for delta in choice.delta.tool_calls or []:
                    call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                    call["id"] = delta.id or call["id"]
                    if delta.function is not None:
                        call["name"] += delta.function.name or ""
                        call["arguments"] += delta.function.arguments or ""
                finish = choice.finish_reason or finish
            if pending and time.monotonic() - sent >= COALESCE_SECONDS:
                await ctx.progress(0.0, "", {"delta": "".join(pending), "attempt": ctx.attempt})
                pending, sent = [], time.monotonic()
    except openai.OpenAIError as exc:
        raise provider_error(exc) from None
    except httpx.HTTPError as exc:  # the stream broke off
        raise ProtocolError(S.UNAVAILABLE, f"the model's stream broke off: {exc}") from None
    if pending:
        await ctx.progress(0.0, "", {"delta": "".join(pending), "attempt": ctx.attempt})
    return answer_of("".join(parts), model, finish, [calls[i] for i in sorted(calls)], ctx)


@plugin.protocol(
    "structured",
    type=T.PROTOCOL_TYPE_GENERATION,
    description="A JSON object that fits `schema`, asked again with the validation errors when it does not",
)
async def structured(data: dict[str, Any], ctx: Context) -> dict[str, Any]:
    schema = data.get("schema")
    if not isinstance(schema, dict):
        raise ValueError("`schema` must be a JSON Schema object")
    try:
        checker = compile_schema(schema)
    except SchemaInvalid as exc:
        raise ValueError(f"`schema` is {exc}") from None
    answer = await ask_json(messages_of(data), options_of(data, ctx), checker, int(data.get("repairs", 2)), ctx)
    return answer if isinstance(answer, dict) else {"value": answer}


async def ask_json(
    messages: list[dict[str, Any]], options: dict[str, Any], schema: PayloadSchema, repairs: int, ctx: Context
) -> Any:
    """The model's answer as JSON that fits `schema`, asking again with the validation errors at
    most `repairs` times; OUT_OF_RANGE for an answer cut at max_tokens, INVALID_ARGUMENT when no
    answer fits."""
    repairs = max(0, min(repairs, MAX_REPAIRS))
    options = {
        **options,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": schema.source, "strict": True},
        },
    }
    problem = ""
    for _ in range(repairs + 1):
        response = await complete(messages, options, ctx)
        choice = response.choices[0]
        if choice.finish_reason == "length":
            raise ProtocolError(S.OUT_OF_RANGE, "the answer was cut at max_tokens before its JSON ended")
        text = choice.message.content or ""
        try:
            answer = json.loads(text)
        except json.JSONDecodeError as exc:
            problem = f"the answer is not JSON: {exc.msg} at character {exc.pos}"
        else:
            problems = schema.problems(answer, root="answer")
            if not problems:
                return answer
            problem = "; ".join(f"{where}: {why}" for where, why in problems[:5])
        messages = [
            *messages,
            {"role": "assistant", "content": text},
            {"role": "user", "content": f"That answer does not fit the schema: {problem}. Answer again, JSON only."},
        ]
    raise ProtocolError(S.INVALID_ARGUMENT, f"no answer fit the schema after {repairs} repairs: {problem}")


VERDICT_SCHEMA = compile_schema(
    {
        "type": "object",
        "properties": {
            "verdict": {"enum": ["accept", "retry", "reject"]},
            "feedback": {"type": "string"},
            "retry_children": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["verdict", "feedback"],
    }
)


MAX_EMBED_TEXTS = 2048  # what OpenAI's embeddings endpoint takes in one request


@plugin.protocol(
    "embed",
    type=T.PROTOCOL_TYPE_TRANSFORM,
    description="Embeddings of `input` (a text or a list of texts): {embeddings (one per text, in order), dimensions,"
    " model, usage}",
)
async def embed(data: dict[str, Any], ctx: Context) -> dict[str, Any]:
    given = data.get("input")
    texts = [given] if isinstance(given, str) else given
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t for t in texts):
        raise ValueError("`input` must be a text, or a list of texts, none of them empty")
    if len(texts) > MAX_EMBED_TEXTS:
        raise ValueError(f"`input` holds {len(texts)} texts; one call embeds at most {MAX_EMBED_TEXTS}")
    options: dict[str, Any] = {k: v for k, v in options_of(data, ctx).items() if k in ("model", "timeout")}
    if data.get("dimensions") is not None:
        options["dimensions"] = int(data["dimensions"])
    try:
        response = await client().embeddings.create(input=texts, encoding_format="float", **options)
    except openai.OpenAIError as exc:
        raise provider_error(exc) from None
    if response.usage is not None:
        ctx.report_usage(prompt_tokens=response.usage.prompt_tokens or 0)
    vectors = [item.embedding for item in sorted(response.data, key=lambda item: item.index)]
    if len(vectors) != len(texts):
        answered = f"the model server answered {len(vectors)} embeddings for {len(texts)} texts"
        raise ProtocolError(S.UNAVAILABLE, answered)
    return {
        "embeddings": vectors,
        "dimensions": len(vectors[0]),
        "model": response.model,
        "usage": dict(ctx.usage),
    }


@plugin.protocol(
    "judge",
    type=T.PROTOCOL_TYPE_SUPERVISOR,
    description="A supervisor: the model judges the children's outputs against `criteria` (in the supervised"
    " node's input) and accepts, sends back with feedback, or rejects",
)
async def judge(data: dict[str, Any], ctx: Context) -> Reply:
    given: dict[str, Any] = data["input"] if isinstance(data.get("input"), dict) else {}
    criteria = given.get("criteria") or data.get("criteria") or "correct, complete and clear"
    children = data.get("children", {})
    prompt = (
        f"Judge these outputs (round {data.get('round', 1)}) against the criteria: {criteria}.\n"
        f"Outputs by child: {json.dumps(children, ensure_ascii=False)}\n"
        f"Earlier rounds: {json.dumps(data.get('history', []), ensure_ascii=False)}\n"
        'Answer with JSON: {"verdict": "accept" | "retry" | "reject", "feedback": "...", "retry_children": [...]}.'
    )
    system = "You are a strict reviewer. Send work back with concrete feedback; reject only what cannot be fixed."
    options = options_of({"model": given.get("judge_model"), "temperature": 0}, ctx)
    verdict = await ask_json(messages_of({"prompt": prompt, "system": system}), options, VERDICT_SCHEMA, 2, ctx)
    feedback = str(verdict.get("feedback", ""))
    if verdict["verdict"] == "accept":
        return accept(None, feedback=feedback)
    if verdict["verdict"] == "reject":
        return fail(feedback or "rejected by the judge", feedback=feedback)
    wanted = [c for c in verdict.get("retry_children") or [] if c in children]
    return retry(feedback, children=wanted or None)


@plugin.protocol(
    "route",
    type=T.PROTOCOL_TYPE_ROUTER,
    description="A router: the model picks the adaptive node's next state among `states`, given the last output",
)
async def route(data: dict[str, Any], ctx: Context) -> Reply:
    states = [str(s) for s in data.get("states", [])]
    if not states:
        raise ValueError("no `states` to choose from")
    given: dict[str, Any] = data["input"] if isinstance(data.get("input"), dict) else {}
    prompt = (
        f"The state {data.get('state')!r} produced: {json.dumps(data.get('output'), ensure_ascii=False)}\n"
        f"Guidance: {given.get('routing', 'pick the state that should handle this next')}\n"
        f'Pick the next state among {states}. Answer with JSON: {{"next_state": "...", "because": "..."}}.'
    )
    schema = compile_schema(
        {
            "type": "object",
            "properties": {"next_state": {"enum": states}, "because": {"type": "string"}},
            "required": ["next_state"],
        }
    )
    options = options_of({"model": given.get("router_model"), "temperature": 0}, ctx)
    answer = await ask_json(messages_of({"prompt": prompt}), options, schema, 2, ctx)
    return goto(str(answer["next_state"]), because=str(answer.get("because", "")))


if __name__ == "__main__":
    plugin.main()
