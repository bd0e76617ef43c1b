"""The SDK reading workflow definitions from text a user (or a user's user) gave: what cannot be a
definition is a MALFORMED_DEFINITION error, at once, never a hang, an exhausted memory or a
RecursionError; YAML's anchors still work as YAML users write them."""

from __future__ import annotations

import time

import grpc
import pytest

from mcp_sdk import McpError
from mcp_sdk.definitions import workflow_from
from mcp_sdk.values import strict_json


def aliases(levels: int) -> str:
    """A wait schema whose aliases of nine aliases, `levels` deep, expand to 9**levels values."""
    lines = ["workflow_id: lol", "root:", "  id: r", "  wait:", "    signal: go", "    schema:", "      a0: &a0 {k: v}"]
    lines += [f"      a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 9)}]" for n in range(1, levels + 1)]
    return "\n".join(lines)


HOSTILE = {
    "JSON arrays 100,000 deep": "[" * 100_000 + "]" * 100_000,
    "JSON objects 100,000 deep": '{"a":' * 100_000 + "1" + "}" * 100_000,
    "YAML sequences 20,000 deep": "a:\n  " + "- " * 20_000 + "x",
    "aliases expanding to 43 million values": aliases(8),
    "an alias inside itself": "workflow_id: w\nroot: &r {id: r, sequence: {children: [*r]}}",
}


@pytest.mark.parametrize("name", HOSTILE)
def test_a_hostile_text_is_a_malformed_definition_at_once(name):
    started = time.monotonic()
    with pytest.raises(McpError) as refused:
        workflow_from(HOSTILE[name])
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT and refused.value.reason == "MALFORMED_DEFINITION"
    assert time.monotonic() - started < 20  # the aliases alone took minutes and gigabytes


def test_anchors_and_merge_keys_still_read():
    shared = """
workflow_id: reviewed
root:
  id: root
  sequence:
    children:
      - {id: a, step: {protocol: echo, retry: &retry {max_attempts: 3, initial_backoff: 0.1s}}}
      - {id: b, step: {protocol: echo, retry: *retry}}
      - {id: c, step: {protocol: echo, retry: {<<: *retry, max_attempts: 5}}}
"""
    children = workflow_from(shared).root.sequence.children
    assert [c.step.retry.max_attempts for c in children] == [3, 3, 5]
    assert children[2].step.retry.initial_backoff.ToMilliseconds() == 100
    assert aliases(5).count("*a") == 45 and workflow_from(aliases(5)).root.wait.signal == "go"  # 9**5 values


def test_strict_json_refuses_what_it_cannot_descend_with_value_error():
    with pytest.raises(ValueError, match="nested too deeply"):
        strict_json("[" * 100_000)
