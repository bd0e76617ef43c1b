"""A scripted OpenAI-compatible chat server for the llm plugin's tests (no model runs here):
`python -m tests.support.fake_llm` serves POST /v1/chat/completions on a free port and prints
`ready <port>`. What it answers depends on the request's model:

    ok           a short text, with usage
    json-good    JSON that fits the tests' schema
    json-repair  JSON that does not fit, then (once the conversation holds its answer) JSON that does
    json-never   JSON that never fits
    json-evil    JSON whose title is 40 a's and a '!' (backtracking regex engines take hours on ^(a+)+$)
    length       JSON cut at max_tokens (finish_reason "length")
    429          429 with retry-after-ms: 400
    flaky-500    500 the first time a prompt is asked, then a text
    400          400 (a bad request)
    judge-once   a verdict: retry (round 1, with feedback), then accept
    judge-reject a verdict: reject
    route-to-b   a next state: b
    tools-weather  a call of the `weather` tool for Paris (when the request offers tools and the
                 conversation holds no tool answer yet; streamed in pieces when asked to stream),
                 then a text quoting that answer
    (any model, with "stream": true) SSE chunks of "Hello world", then usage; `stream-cut`
                 breaks off mid-answer the first time a conversation is asked; `stream-stall`
                 sends nothing more after two chunks (for 60 s, the connection open) that time

GET /requests lists the bodies it received (and POST /reset forgets them).
"""

from __future__ import annotations

import asyncio
import collections
import json
import sys
from typing import Any

from aiohttp import web

received: list[dict[str, Any]] = []
asked: collections.Counter[str] = collections.Counter()


def completion(model: str, content: str, finish: str = "stop", prompt_tokens: int = 11) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 7, "total_tokens": prompt_tokens + 7},
    }


def error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    body = {"error": {"message": message, "type": "fake", "code": str(status)}}
    return web.json_response(body, status=status, headers=headers)


async def chat(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    received.append(body)
    model = body.get("model", "")
    messages = body.get("messages", [])
    answered = any(m.get("role") == "assistant" for m in messages)
    if (
        body.get("stream")
        and model == "tools-weather"
        and body.get("tools")
        and not any(m.get("role") == "tool" for m in messages)
    ):
        return await stream_call(request, model)
    if body.get("stream"):
        return await stream(request, model, messages)
    if model == "ok":
        return web.json_response(completion(model, "Hello from the fake model."))
    if model == "json-good":
        return web.json_response(completion(model, json.dumps({"title": "Tea", "score": 3})))
    if model == "json-repair":
        content = json.dumps({"title": "Tea", "score": 3}) if answered else json.dumps({"title": 5})
        return web.json_response(completion(model, content, prompt_tokens=20 if answered else 11))
    if model == "json-never":
        return web.json_response(completion(model, "this is not json"))
    if model == "json-evil":
        return web.json_response(completion(model, json.dumps({"title": "a" * 40 + "!", "score": 1})))
    if model == "length":
        return web.json_response(completion(model, '{"title": "Te', finish="length"))
    if model == "429":
        return error(429, "slow down", {"retry-after-ms": "400"})
    if model == "flaky-500":
        key = json.dumps(messages, sort_keys=True)
        asked[key] += 1
        if asked[key] == 1:
            return error(500, "the fake server had a bad moment")
        return web.json_response(completion(model, "Fine now."))
    if model == "judge-once":  # sends round 1 back, accepts after
        prompt = messages[-1].get("content", "")
        verdict = {"verdict": "retry", "feedback": "add a title"} if "(round 1)" in prompt else {"verdict": "accept"}
        return web.json_response(completion(model, json.dumps({"feedback": "good", **verdict})))
    if model == "judge-reject":
        return web.json_response(completion(model, json.dumps({"verdict": "reject", "feedback": "off topic"})))
    if model == "route-to-b":
        return web.json_response(completion(model, json.dumps({"next_state": "b", "because": "it asks for b"})))
    if model == "tools-weather":
        answers = [m for m in messages if m.get("role") == "tool"]
        if any(set(m) - {"role", "content", "tool_call_id"} for m in answers):  # as strict servers are
            return error(400, "a tool message has a field its role does not take")
        if body.get("tools") and not answers:
            call = {
                "id": "call_w1",
                "type": "function",
                "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
            }
            reply = completion(model, "", finish="tool_calls")
            reply["choices"][0]["message"] = {"role": "assistant", "content": None, "tool_calls": [call]}
            return web.json_response(reply)
        return web.json_response(completion(model, f"In Paris: {answers[-1]['content'] if answers else 'no idea'}"))
    if model == "400":
        return error(400, "this model does not take that request")
    return error(404, f"no model {model!r}")


def chunk(model: str, content: str | None, finish: str | None = None, usage: bool = False) -> bytes:
    choices = [] if usage else [{"index": 0, "delta": {"content": content} if content else {}, "finish_reason": finish}]
    data: dict[str, Any] = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": model,
        "choices": choices,
    }
    if usage:
        data["usage"] = {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}
    return f"data: {json.dumps(data)}\n\n".encode()


async def stream(request: web.Request, model: str, messages: list[dict[str, Any]]) -> web.StreamResponse:
    """SSE chunks 30 ms apart ("Hel", "lo ", "wor", "ld"), then the usage chunk; `stream-cut`
    breaks off after two chunks the first time a conversation is asked, `stream-stall` goes
    silent there."""
    key = json.dumps(messages, sort_keys=True)
    asked[key] += 1
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for i, part in enumerate(("Hel", "lo ", "wor", "ld")):
        if model == "stream-cut" and asked[key] == 1 and i == 2:
            assert request.transport is not None
            request.transport.close()  # the connection drops mid-answer
            return response
        if model == "stream-stall" and asked[key] == 1 and i == 2:
            await asyncio.sleep(60)  # the model stops sending, the connection stays open
        await response.write(chunk(model, part))
        await asyncio.sleep(0.03)
    await response.write(chunk(model, None, "stop"))
    await response.write(chunk(model, None, usage=True))
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


async def stream_call(request: web.Request, model: str) -> web.StreamResponse:
    """A call of the `weather` tool, streamed as OpenAI streams one: its id and name first, then
    its arguments in pieces."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    pieces = [
        {"index": 0, "id": "call_w1", "type": "function", "function": {"name": "weather", "arguments": ""}},
        {"index": 0, "function": {"arguments": '{"city": '}},
        {"index": 0, "function": {"arguments": '"Paris"}'}},
    ]
    for piece in pieces:
        data = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": model,
            "choices": [{"index": 0, "delta": {"tool_calls": [piece]}, "finish_reason": None}],
        }
        await response.write(f"data: {json.dumps(data)}\n\n".encode())
    await response.write(chunk(model, None, "tool_calls"))
    await response.write(chunk(model, None, usage=True))
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


async def embeddings(request: web.Request) -> web.StreamResponse:
    """Four numbers per text, from its length and letters (the same text, the same vector), as
    OpenAI answers; model "400" refuses."""
    body = await request.json()
    received.append(body)
    model = body.get("model", "")
    if model == "400":
        return error(400, "this model does not embed")
    texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
    data = [
        {
            "object": "embedding",
            "index": i,
            "embedding": [float(len(t)), float(t.count("a")), float(t.count("e")), float(sum(map(ord, t)) % 97)],
        }
        for i, t in reversed(list(enumerate(texts)))  # out of order: the client must put them back
    ]
    words = sum(len(t.split()) for t in texts)
    return web.json_response(
        {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": words, "total_tokens": words}}
    )


async def requests(request: web.Request) -> web.StreamResponse:
    return web.json_response(received)


async def reset(request: web.Request) -> web.StreamResponse:
    received.clear()
    asked.clear()
    return web.json_response({})


async def main() -> None:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/requests", requests)
    app.router.add_post("/reset", reset)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"ready {port}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
