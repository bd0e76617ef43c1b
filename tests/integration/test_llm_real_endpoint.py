"""Opt-in: the llm plugin against a real OpenAI-compatible endpoint. Set MCP_TEST_LLM_URL (the
base URL, e.g. http://127.0.0.1:11434/v1), and MCP_TEST_LLM_MODEL / MCP_TEST_LLM_KEY as the
server needs; without MCP_TEST_LLM_URL it is not collected to run (no model runs on CI)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from mcp_sdk.proto import task_pb2
from tests.conftest import client_for
from tests.helpers import run, workflow
from tests.support.llm_plugin import spawn_llm_plugin

URL = os.environ.get("MCP_TEST_LLM_URL", "")
pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.skipif(not URL, reason="opt-in: set MCP_TEST_LLM_URL to an OpenAI-compatible endpoint"),
]


@pytest.fixture(scope="module")
def real_llm() -> Iterator[str]:
    plugin, address = spawn_llm_plugin(
        URL, os.environ.get("MCP_TEST_LLM_MODEL", ""), os.environ.get("MCP_TEST_LLM_KEY", "")
    )
    yield address
    plugin.terminate()
    plugin.wait(timeout=10)


async def test_a_real_model_chats_and_answers_in_a_schema(server_factory, real_llm):
    running = await server_factory(extra_plugins=(real_llm,))
    client = client_for(running)
    chat = workflow("real-chat", {"id": "c", "step": {"protocol": "chat", "input": "{'prompt': 'Say OK.'}"}})
    task = await run(client, chat, timeout=120)
    assert task.status == task_pb2.TASK_STATUS_COMPLETED, task.error
    assert task.result.struct_value.fields["text"].string_value and task.usage["prompt_tokens"] > 0
    schema = "{'type': 'object', 'properties': {'answer': {'type': 'integer'}}, 'required': ['answer']}"
    body = {"protocol": "structured", "input": f"{{'prompt': 'What is 2 + 3? Answer in JSON.', 'schema': {schema}}}"}
    answered = await run(client, workflow("real-structured", {"id": "s", "step": body}), timeout=120)
    assert answered.status == task_pb2.TASK_STATUS_COMPLETED, answered.error
    assert answered.result.struct_value.fields["answer"].number_value == 5
    await client.channel.close()
