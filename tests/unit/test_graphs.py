"""The graphs of `mcp workflow graph`, `mcp task graph` and the console: labels that cannot break
out of Mermaid or DOT, and node ids that are never a keyword of either."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from google.protobuf import json_format

from mcp_sdk.proto import workflow_pb2
from mcp_server.cli.graph import to_dot, to_mermaid, workflow_graph

HOSTILE_CONDITION = 'output.x == "<img src=x onerror=\\"alert(1)\\">" && output.y != "a&b#c"'


def adaptive(root_id: str, state_node_ids: tuple[str, str]) -> workflow_pb2.Workflow:
    first, second = state_node_ids
    return json_format.ParseDict(
        {
            "workflow_id": "w",
            "root": {
                "id": root_id,
                "adaptive": {
                    "initial_state": "a",
                    "states": [
                        {
                            "name": "a",
                            "node": {"id": first, "step": {"protocol": "echo"}},
                            "transitions": [{"when": HOSTILE_CONDITION, "to": "b"}, {"to": "b"}],
                        },
                        {"name": "b", "terminal": True, "node": {"id": second, "step": {"protocol": "echo"}}},
                    ],
                },
            },
        },
        workflow_pb2.Workflow(),
    )


def test_mermaid_labels_carry_quotes_and_markup_as_entity_codes():
    text = to_mermaid(workflow_graph(adaptive("r", ("s", "t"))))
    labels = re.findall(r'\["([^"]*)"\]|\|"([^"]*)"\|', text)
    assert labels, text
    for line in text.splitlines():
        assert "<" not in line and ">" not in line.replace("-->", "").replace("-.->", ""), line
    assert "#quot;#lt;img src=x onerror=\\#quot;alert(1)\\#quot;#gt;#quot;" in text
    assert "a#amp;b#35;c" in text


def test_node_ids_are_never_mermaid_or_dot_keywords():
    text = to_mermaid(workflow_graph(adaptive("end", ("graph", "subgraph"))))
    ids = set(re.findall(r"^\s*(\w+)\[", text, re.MULTILINE)) | set(re.findall(r"subgraph (\w+)\[", text))
    assert ids and not ids & {"end", "graph", "subgraph", "style", "class", "click", "flowchart"}, ids
    dot = to_dot(workflow_graph(adaptive("node", ("edge", "digraph"))))
    assert re.search(r'label="[^"]*\\"', dot), "a quote inside a DOT label must be escaped"
    assert not re.search(r"^\s*(edge|digraph|graph|subgraph) \[|^\s*node \[label", dot, re.MULTILINE)


def test_a_wait_for_an_event_says_its_key_and_its_condition():
    wait = {"event": "bid", "key": "input.lot", "condition": "event.data.amount >= input.reserve"}
    workflow = json_format.ParseDict({"workflow_id": "w", "root": {"id": "b", "wait": wait}}, workflow_pb2.Workflow())
    text = to_dot(workflow_graph(workflow))
    assert "[wait for event bid by key input.lot if event.data.amount >= input.reserve]" in text


def test_an_agent_draws_its_model_and_an_edge_to_each_tool_and_back():
    definition = yaml.safe_load((Path(__file__).parents[2] / "examples" / "llm_agent.yaml").read_text())
    graph = workflow_graph(json_format.ParseDict(definition, workflow_pb2.Workflow()))
    calls = sorted(label for _, _, label, _ in graph.edges if label.startswith("calls "))
    assert calls == ["calls ask_person", "calls entities", "calls summary"]
    assert sum(1 for _, _, label, _ in graph.edges if label == "answer") == 3
    assert any(label == "agent helper (at most 6 rounds)" for _, label, _ in graph.clusters)
    assert "think\\n[chat]" in graph.nodes.values()
    assert '|"calls entities"|' in to_mermaid(graph) and 'label="calls summary"' in to_dot(graph)
