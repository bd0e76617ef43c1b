"""Walking a workflow definition's tree of nodes: every node with its field path, or the node a
step path names, with the ids the server gives nodes that have none."""

from __future__ import annotations

from collections.abc import Iterator

from mcp_sdk.proto import workflow_pb2


def default_node_id(node: workflow_pb2.Node, index: int) -> str:
    """The id a node without one runs under: a step's protocol, else its kind and its position
    among its siblings (`parallel2`)."""
    if node.WhichOneof("kind") == "step" and node.step.protocol:
        return node.step.protocol
    return f"{node.WhichOneof('kind') or 'node'}{index}"


def child_nodes(
    node: workflow_pb2.Node, path: str, *, into_subworkflows: bool = True
) -> Iterator[tuple[str, workflow_pb2.Node, str]]:
    """The nodes directly under `node` (at field path `path`): each with its field path and the id
    it runs under when it has none of its own (as the compiler gives it); with
    `into_subworkflows`, a subworkflow's stored root too."""
    kind = node.WhichOneof("kind")
    if kind in ("sequence", "parallel", "supervise"):
        for i, child in enumerate(getattr(node, kind).children):
            yield f"{path}.{kind}.children[{i}]", child, default_node_id(child, i)
    elif kind == "map" and node.map.HasField("body"):
        yield f"{path}.map.body", node.map.body, default_node_id(node.map.body, 0)
    elif kind == "adaptive":
        for i, state in enumerate(node.adaptive.states):
            if state.HasField("node"):
                yield f"{path}.adaptive.states[{i}].node", state.node, state.name
    elif kind == "recover":
        for i, part in enumerate(("body", "handler")):
            if node.recover.HasField(part):
                child = getattr(node.recover, part)
                yield f"{path}.recover.{part}", child, default_node_id(child, i)
    elif kind == "agent":
        if node.agent.HasField("model"):
            yield f"{path}.agent.model", node.agent.model, default_node_id(node.agent.model, 0)
        for i, tool in enumerate(node.agent.tools):
            if tool.HasField("node"):
                yield f"{path}.agent.tools[{i}].node", tool.node, default_node_id(tool.node, i + 1)
    elif kind == "subworkflow" and into_subworkflows and node.subworkflow.definition.HasField("root"):
        yield f"{path}.subworkflow.definition.root", node.subworkflow.definition.root, "root"


def all_nodes(
    root: workflow_pb2.Node, path: str = "workflow.root", *, into_subworkflows: bool = True
) -> Iterator[tuple[str, workflow_pb2.Node]]:
    """`root` and every node under it, depth first, in definition order."""
    stack = [(path, root)]
    while stack:
        at, node = stack.pop()
        yield at, node
        below = child_nodes(node, at, into_subworkflows=into_subworkflows)
        stack.extend((child_path, child) for child_path, child, _ in reversed(list(below)))


def node_at(root: workflow_pb2.Node, step_path: str) -> workflow_pb2.Node | None:
    """The node that runs at `step_path` (`root/review#2/draft[3]`: rounds and items name the same
    node), or None when the tree has no such node."""
    names = [segment.split("#")[0].split("[")[0] for segment in step_path.split("/")]
    if names[0] != (root.id or "root"):
        return None
    node = root
    for name in names[1:]:
        found = next((child for _, child, default in child_nodes(node, "") if (child.id or default) == name), None)
        if found is None:
            return None
        node = found
    return node
