"""Finding a definition's node from a step path (the console's forms for waits, inside a
subworkflow too) and walking every node, as the compiler names them."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format

from mcp_sdk.proto import workflow_pb2
from mcp_sdk.workflow_tree import all_nodes, node_at
from mcp_server.cli.graph import to_dot, to_mermaid, workflow_graph


def node(data: dict[str, Any]) -> workflow_pb2.Node:
    return json_format.ParseDict(data, workflow_pb2.Node())


# The subworkflow's own wait is called `ask`, as the enclosing workflow's is.
CHILD = {"id": "inner", "sequence": {"children": [{"id": "ask", "wait": {"signal": "child"}}]}}
STATE = {"name": "first", "node": {"step": {"protocol": "echo"}}, "terminal": True}
DEFINITION = {"workflow_id": "c", "root": CHILD}
TREE = node(
    {
        "id": "root",
        "sequence": {
            "children": [
                {"id": "ask", "wait": {"signal": "parent"}},
                {"step": {"protocol": "echo"}},
                {"map": {"items": "input.xs", "body": {"supervise": {"supervisor": "judge", "children": [
                    {"id": "draft", "step": {"protocol": "echo"}}]}}}},
                {"id": "flow", "adaptive": {"states": [STATE]}},
                {"id": "sub", "subworkflow": {"workflow_id": "c", "version": 3, "definition": DEFINITION}},
            ]
        },
    }
)  # fmt: skip


def test_a_step_path_finds_its_node_through_rounds_items_states_and_subworkflows():
    assert node_at(TREE, "root/ask").wait.signal == "parent"
    assert node_at(TREE, "root/sub/inner/ask").wait.signal == "child"
    assert node_at(TREE, "root/echo").step.protocol == "echo"  # a step without an id runs as its protocol
    assert node_at(TREE, "root/map2/supervise0#2/draft#3").id == "draft"  # default ids, rounds
    assert node_at(TREE, "root/map2[7]/supervise0").supervise.supervisor == "judge"
    assert node_at(TREE, "root/flow/first#4").step.protocol == "echo"  # a state's node, by the state's name
    assert node_at(TREE, "root/sub/inner/nothing") is None
    assert node_at(TREE, "other/ask") is None


def test_every_node_is_walked_in_order_into_subworkflows_or_not():
    every = [path for path, _ in all_nodes(TREE)]
    assert every[-3:] == [
        "workflow.root.sequence.children[4]",
        "workflow.root.sequence.children[4].subworkflow.definition.root",
        "workflow.root.sequence.children[4].subworkflow.definition.root.sequence.children[0]",
    ]
    assert len(every) == 11 and len(list(all_nodes(TREE, into_subworkflows=False))) == 9


def test_the_graph_draws_a_subworkflow_as_a_cluster_of_its_nodes():
    graph = workflow_graph(workflow_pb2.Workflow(workflow_id="w", root=TREE))
    label = next(label for _, label, _ in graph.clusters if label.startswith("subworkflow"))
    assert label == "subworkflow sub: c v3"
    assert "subworkflow sub: c v3" in to_mermaid(graph)


def test_nested_boxes_are_drawn_nested_each_node_in_its_innermost_box():
    """Mermaid places a node in the last subgraph that names it: every box listed every node
    inside it, so the outermost took them all and the inner boxes were drawn empty."""
    graph = workflow_graph(workflow_pb2.Workflow(workflow_id="w", root=TREE))
    text = to_mermaid(graph)
    lines = [line.strip() for line in text.splitlines()]
    for node_id in graph.nodes:
        assert sum(line.startswith(f"{node_id}[") for line in lines) == 1, node_id  # declared once
    nested = text[text.index('subgraph n_root_sub["subworkflow sub: c v3"]') :]
    assert nested.index('subgraph n_root_sub_inner["sequence inner"]') < nested.index("n_root_sub_inner_ask[")
    assert nested.index("n_root_sub_inner_ask[") < nested.index("end")
    dot = to_dot(graph)
    assert dot.count("n_root_sub_inner_ask [label") == 1
    assert dot.index("subgraph cluster_n_root_sub ") < dot.index("subgraph cluster_n_root_sub_inner ")


RECOVER = node(
    {
        "id": "r",
        "recover": {
            "body": {"id": "try", "step": {"protocol": "chat"}},
            "handler": {"sequence": {"children": [{"id": "ask", "wait": {"signal": "help"}}]}},
            "codes": ["UNAVAILABLE", "DEADLINE_EXCEEDED"],
        },
    }
)


def test_a_recover_node_s_body_and_handler_are_found_walked_and_drawn():
    assert node_at(RECOVER, "r/try").step.protocol == "chat"
    assert node_at(RECOVER, "r/sequence1/ask").wait.signal == "help"  # the handler's default id: its position
    assert [path for path, _ in all_nodes(RECOVER)] == [
        "workflow.root",
        "workflow.root.recover.body",
        "workflow.root.recover.handler",
        "workflow.root.recover.handler.sequence.children[0]",
    ]
    text = to_mermaid(workflow_graph(workflow_pb2.Workflow(workflow_id="w", root=RECOVER)))
    assert 'subgraph n_r["recover r"]' in text
    assert 'n_r_try -.->|"on UNAVAILABLE, DEADLINE_EXCEEDED"| n_r_sequence_ask' in text


def test_a_recover_node_that_rethrows_leads_on_from_its_body_alone():
    rethrows = workflow_pb2.Node()
    rethrows.CopyFrom(RECOVER)
    rethrows.recover.rethrow = True
    text = to_mermaid(workflow_graph(workflow_pb2.Workflow(workflow_id="w", root=rethrows)))
    assert 'subgraph n_r["recover r (then fails)"]' in text
    assert "n_r_try --> wf_result" in text and "n_r_sequence_ask --> wf_result" not in text


def test_a_recover_node_that_cleans_up_on_a_cancel_says_so_on_its_edge():
    cleans_up = workflow_pb2.Node()
    cleans_up.CopyFrom(RECOVER)
    cleans_up.recover.on_cancel = True
    text = to_mermaid(workflow_graph(workflow_pb2.Workflow(workflow_id="w", root=cleans_up)))
    assert 'n_r_try -.->|"on UNAVAILABLE, DEADLINE_EXCEEDED or cancel"| n_r_sequence_ask' in text


def test_a_composite_with_a_timeout_says_so_on_its_box():
    timed = workflow_pb2.Node()
    timed.CopyFrom(RECOVER)
    timed.timeout.FromSeconds(300)
    text = to_mermaid(workflow_graph(workflow_pb2.Workflow(workflow_id="w", root=timed)))
    assert 'subgraph n_r["recover r (timeout 300s)"]' in text


def test_waits_sleeps_and_publishes_are_drawn_as_what_they_do():
    root = node(
        {
            "id": "r",
            "sequence": {
                "children": [
                    {"id": "ask", "wait": {"signal": "ok"}},
                    {"id": "nap", "sleep": {"duration": "1s"}},
                    {"id": "tell", "publish": {"event": "done.now"}},
                ]
            },
        }
    )
    text = to_mermaid(workflow_graph(workflow_pb2.Workflow(workflow_id="w", root=root)))
    assert 'n_r_ask["ask\\n[wait for ok]"]' in text and 'n_r_nap["nap\\n[sleep]"]' in text
    assert 'n_r_tell["tell\\n[publish done.now]"]' in text and "(empty)" not in text
