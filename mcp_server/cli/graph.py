"""Graphs of workflows and of task runs, as Mermaid or Graphviz DOT.

A workflow becomes nodes (steps, supervisors, states) and edges (sequence order, fan-out and
join, supervisor review and retry, adaptive transitions with their CEL conditions, a recover
node's way to its handler), grouped
in clusters per composite node. A task becomes the tree of what actually ran, coloured by
status.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from mcp_sdk.proto import task_pb2, workflow_pb2


@dataclass
class Graph:
    nodes: dict[str, str] = field(default_factory=dict)  # id -> label
    edges: list[tuple[str, str, str, bool]] = field(default_factory=list)  # from, to, label, dashed
    clusters: list[tuple[str, str, list[str]]] = field(default_factory=list)  # id, label, member node ids
    styles: dict[str, str] = field(default_factory=dict)  # node id -> status class


def _clean(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text)


def _safe(text: str) -> str:
    """A graph node id for `text`: prefixed, so that no id is one of Mermaid's or DOT's keywords
    (a node called `end`, `graph` or `subgraph` would break the graph)."""
    return "n_" + _clean(text)


def _add(graph: Graph, node: workflow_pb2.Node, prefix: str) -> tuple[list[str], list[str], list[str]]:
    """Add `node`; return its entry ids, exit ids and every node id it contains. A composite's
    box says its timeout, when it has one."""
    added = _add_kind(graph, node, prefix)
    name = f"{prefix}{_clean(node.id or node.WhichOneof('kind') or '')}"
    if node.HasField("timeout") and graph.clusters and graph.clusters[-1][0] == name:
        seconds = node.timeout.seconds + node.timeout.nanos / 1e9
        graph.clusters[-1] = (name, f"{graph.clusters[-1][1]} (timeout {seconds:g}s)", graph.clusters[-1][2])
    return added


def _add_kind(graph: Graph, node: workflow_pb2.Node, prefix: str) -> tuple[list[str], list[str], list[str]]:
    kind = node.WhichOneof("kind")
    name = f"{prefix}{_clean(node.id or kind or '')}"  # prefix: "n_" at the root, the parent's name below
    if kind == "step":
        graph.nodes[name] = f"{node.id or node.step.protocol}\\n[{node.step.protocol}]"
        return [name], [name], [name]
    if kind in ("wait", "sleep", "publish"):
        what = {"wait": f"wait for {_awaited(node.wait)}", "sleep": "sleep", "publish": f"publish {node.publish.event}"}
        graph.nodes[name] = f"{node.id or kind}\\n[{what[kind]}]"
        return [name], [name], [name]
    members: list[str] = []
    if kind == "sequence":
        entry: list[str] = []
        exits: list[str] = []
        for child in node.sequence.children:
            c_entry, c_exit, c_all = _add(graph, child, f"{name}_")
            members += c_all
            for a in exits:
                for b in c_entry:
                    graph.edges.append((a, b, "", False))
            entry = entry or c_entry
            exits = c_exit
        graph.clusters.append((name, f"sequence {node.id}", members))
        return entry, exits, members
    if kind in ("parallel", "map"):
        children = list(node.parallel.children) if kind == "parallel" else [node.map.body]
        entry, exits = [], []
        for child in children:
            c_entry, c_exit, c_all = _add(graph, child, f"{name}_")
            entry += c_entry
            exits += c_exit
            members += c_all
        label = f"parallel {node.id}" if kind == "parallel" else f"map {node.id} over {node.map.items}"
        graph.clusters.append((name, label, members))
        return entry, exits, members
    if kind == "supervise":
        judge = f"{name}_supervisor"
        graph.nodes[judge] = f"supervisor\\n[{node.supervise.supervisor}]"
        entry = []
        for child in node.supervise.children:
            c_entry, c_exit, c_all = _add(graph, child, f"{name}_")
            entry += c_entry
            members += c_all
            graph.edges += [(e, judge, "review", False) for e in c_exit]
            graph.edges += [(judge, e, "retry", True) for e in c_entry]
        members.append(judge)
        graph.clusters.append((name, f"supervise {node.id}", members))
        return entry, [judge], members
    if kind == "adaptive":
        adaptive = node.adaptive
        bounds: dict[str, tuple[list[str], list[str]]] = {}
        for state in adaptive.states:
            s_entry, s_exit, s_all = _add(graph, state.node, f"{name}_{_clean(state.name)}_")
            bounds[state.name] = (s_entry, s_exit)
            members += s_all
        exits = []
        for state in adaptive.states:
            if state.terminal:
                exits += bounds[state.name][1]
            for transition in state.transitions:
                for a in bounds[state.name][1]:
                    for b in bounds.get(transition.to, ([], []))[0]:
                        graph.edges.append((a, b, transition.when or "otherwise", False))
        initial = adaptive.initial_state or (adaptive.states[0].name if adaptive.states else "")
        label = f"adaptive {node.id}" + (f" (router {adaptive.router})" if adaptive.router else "")
        graph.clusters.append((name, label, members))
        return bounds.get(initial, ([], []))[0], exits, members
    if kind == "recover" and node.recover.HasField("body") and node.recover.HasField("handler"):
        b_entry, b_exit, b_all = _add(graph, node.recover.body, f"{name}_")
        h_entry, h_exit, h_all = _add(graph, node.recover.handler, f"{name}_")
        on_error = "on " + ", ".join(node.recover.codes) if node.recover.codes else "on error"
        on_error += " or cancel" if node.recover.on_cancel else ""
        graph.edges += [(a, b, on_error, True) for a in b_entry for b in h_entry]
        rethrow = " (then fails)" if node.recover.rethrow else ""
        graph.clusters.append((name, f"recover {node.id}{rethrow}", b_all + h_all))
        return b_entry, b_exit + ([] if node.recover.rethrow else h_exit), b_all + h_all
    if kind == "agent" and node.agent.HasField("model"):
        m_entry, m_exit, members = _add(graph, node.agent.model, f"{name}_")
        for tool in node.agent.tools:
            t_entry, t_exit, t_all = _add(graph, tool.node, f"{name}_")
            members += t_all
            graph.edges += [(a, b, f"calls {tool.name}", True) for a in m_exit for b in t_entry]
            graph.edges += [(a, b, "answer", True) for a in t_exit for b in m_entry]
        rounds = node.agent.max_rounds or 10
        graph.clusters.append((name, f"agent {node.id} (at most {rounds} rounds)", members))
        return m_entry, m_exit, members
    if kind == "subworkflow" and node.subworkflow.definition.HasField("root"):
        called = node.subworkflow
        entry, exits, members = _add(graph, called.definition.root, f"{name}_")
        graph.clusters.append((name, f"subworkflow {node.id}: {called.workflow_id} v{called.version}", members))
        return entry, exits, members
    graph.nodes[name] = f"{node.id} (empty)"
    return [name], [name], [name]


def workflow_graph(workflow: workflow_pb2.Workflow) -> Graph:
    graph = Graph()
    entry, exits, _ = _add(graph, workflow.root, "n_")
    graph.nodes["wf_input"] = "input"
    graph.nodes["wf_result"] = "result"
    graph.edges += [("wf_input", e, "", False) for e in entry] + [(e, "wf_result", "", False) for e in exits]
    return graph


STATUS_CLASS = {
    task_pb2.STEP_STATUS_COMPLETED: "completed",
    task_pb2.STEP_STATUS_FAILED: "failed",
    task_pb2.STEP_STATUS_RUNNING: "running",
    task_pb2.STEP_STATUS_CANCELLED: "cancelled",
}


def task_graph(task: task_pb2.Task) -> Graph:
    """The tree of executions a task went through: each step path, its status and attempts."""
    graph = Graph()
    paths = {s.path for s in task.steps}
    for state in sorted(task.steps, key=lambda s: (s.start_time.ToNanoseconds(), s.path)):
        name = _safe(state.path)
        detail = f"[{state.protocol}] x{state.attempts}" if state.protocol else state.kind
        graph.nodes[name] = f"{state.path.rsplit('/', 1)[-1]}\\n{detail}"
        graph.styles[name] = STATUS_CLASS.get(state.status, "running")
        parent = state.path.rsplit("/", 1)[0] if "/" in state.path else ""
        if parent in paths:
            graph.edges.append((_safe(parent), name, "", False))
    return graph


def mermaid_text(label: str) -> str:
    """A label as Mermaid text: quotes, angle brackets and ampersands as Mermaid's entity codes,
    so a CEL condition such as `output.tag == "<b>"` neither ends the label nor becomes markup."""
    return "".join(_MERMAID_ENTITIES.get(c, c) for c in label)


_MERMAID_ENTITIES = {'"': "#quot;", "<": "#lt;", ">": "#gt;", "&": "#amp;", "#": "#35;"}


def _nesting(graph: Graph) -> tuple[list[str], dict[str, list[str]], dict[str, list[str]]]:
    """The clusters as a tree: the outermost ones, each one's clusters directly inside it, and
    the nodes directly inside each (a cluster lists every node inside it, nested ones too).
    Clusters are added inner first, so a cluster's parent is the first one after it holding
    all its nodes (a subworkflow's box holds just what its root's box holds)."""
    members = [(cid, set(nodes)) for cid, _, nodes in graph.clusters]
    inner: dict[str, list[str]] = {cid: [] for cid, _ in members}
    outermost: list[str] = []
    for i, (cid, nodes) in enumerate(members):
        parent = next((pid for pid, held in members[i + 1 :] if nodes and nodes <= held), None)
        (inner[parent] if parent is not None else outermost).append(cid)
    held = dict(members)
    own = {
        cid: [n for n in listed if n in graph.nodes and not any(n in held[c] for c in inner[cid])]
        for cid, _, listed in graph.clusters
    }
    return outermost, inner, own


def _cluster_lines(
    graph: Graph,
    opening: Callable[[str, str], str],
    member: Callable[[str], str],
    closing: str,
) -> list[str]:
    """The clusters, nested, each opened (`opening(id, label)`), with its own nodes (`member`)
    and the clusters inside it, then closed."""
    outermost, inner, own = _nesting(graph)
    labels = {cid: label for cid, label, _ in graph.clusters}
    lines: list[str] = []

    def cluster(cid: str, indent: str) -> None:
        lines.append(indent + opening(cid, labels[cid]))
        lines.extend(f"{indent}  {member(node_id)}" for node_id in own[cid])
        for child in inner[cid]:
            cluster(child, indent + "  ")
        lines.append(indent + closing)

    for cid in outermost:
        cluster(cid, "  ")
    return lines


def to_mermaid(graph: Graph) -> str:
    lines = ["flowchart TD"]
    clustered = {m for _, _, members in graph.clusters for m in members}
    for node_id, label in graph.nodes.items():
        if node_id not in clustered:
            lines.append(f'  {node_id}["{mermaid_text(label)}"]')
    lines += _cluster_lines(
        graph,
        lambda cid, label: f'subgraph {cid}["{mermaid_text(label)}"]',
        lambda node_id: f'{node_id}["{mermaid_text(graph.nodes[node_id])}"]',
        "end",
    )
    for a, b, label, dashed in graph.edges:
        arrow = "-.->" if dashed else "-->"
        lines.append(f'  {a} {arrow}|"{mermaid_text(label)}"| {b}' if label else f"  {a} {arrow} {b}")
    for status, colour in (
        ("completed", "#c8f7c5"),
        ("failed", "#f7c5c5"),
        ("running", "#fff3b0"),
        ("cancelled", "#dddddd"),
    ):
        members = [n for n, s in graph.styles.items() if s == status]
        if members:
            lines.append(f"  classDef {status} fill:{colour}")
            lines.append(f"  class {','.join(members)} {status}")
    return "\n".join(lines)


def _dot_text(label: str) -> str:
    """A label inside DOT's double quotes (the `\\n` line breaks the labels carry stay breaks)."""
    return label.replace('"', '\\"')


def to_dot(graph: Graph) -> str:
    colours = {"completed": "palegreen", "failed": "lightpink", "running": "lightyellow", "cancelled": "lightgrey"}
    lines = ["digraph workflow {", "  rankdir=TB;", "  node [shape=box, style=rounded];"]
    clustered = {m for _, _, members in graph.clusters for m in members}
    for node_id, label in graph.nodes.items():
        if node_id not in clustered:
            lines.append(f'  {node_id} [label="{_dot_text(label)}"{_dot_fill(graph, node_id, colours)}];')
    lines += _cluster_lines(
        graph,
        lambda cid, label: f'subgraph cluster_{cid} {{ label="{_dot_text(label)}";',
        lambda node_id: f'{node_id} [label="{_dot_text(graph.nodes[node_id])}"];',
        "}",
    )
    for a, b, label, dashed in graph.edges:
        attrs = [f'label="{_dot_text(label)}"'] if label else []
        if dashed:
            attrs.append("style=dashed")
        lines.append(f"  {a} -> {b}" + (f" [{', '.join(attrs)}]" if attrs else "") + ";")
    lines.append("}")
    return "\n".join(lines)


def _dot_fill(graph: Graph, node_id: str, colours: dict[str, str]) -> str:
    status = graph.styles.get(node_id)
    return f', style="rounded,filled", fillcolor={colours[status]}' if status else ""


def _awaited(wait: workflow_pb2.WaitNode) -> str:
    """What a wait node waits for, in words."""
    if wait.event:
        keyed = f" by key {wait.key}" if wait.key else ""
        return f"event {wait.event}{keyed}" + (f" if {wait.condition}" if wait.condition else "")
    return wait.signal
