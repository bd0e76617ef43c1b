"""Random well-formed workflow definitions (Hypothesis strategies), for the property tests and the
chaos soak (bench/chaos.py): every node kind, nested up to 8 leaves, with retries, timeouts short
enough to cut some runs, failing, flaky and sleeping steps, waits for a signal or an event,
publishes of that event, durable sleeps,
CEL runtime errors, recover nodes that
clean up on a cancel or not, agents that call their tools, and subworkflows (stored first, see
`store_subworkflows`). Leaves are the testkit plugin's protocols."""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from typing import Any

from hypothesis import strategies as st

CreateWorkflow = Callable[[str, dict[str, Any]], Awaitable[None]]
_ids = itertools.count()

LEAVES = [
    ("echo", ""),
    ("counter", "{'n': 1}"),
    ("sleep", "{'ms': 5}"),
    ("fail", "{'code': 'INVALID_ARGUMENT'}"),
    ("fail", "{'code': 'UNAVAILABLE'}"),
    ("flaky", "{'failures': 1}"),
    ("echo", "{'v': input.missing}"),  # a CEL runtime error
]


SIGNAL = "go"  # the signal every generated wait waits for
EVENT = "chaos.ping"  # what generated publish nodes publish and event waits wait for, across tasks
WAITS: list[dict[str, Any]] = [
    # a person's answer, or none within 0.3 s (the task goes on either way)
    {"wait": {"signal": SIGNAL, "timeout": "0.3s", "on_timeout": "{'timed_out': true}"}},
    {"sleep": {"duration": "0.02s"}},  # a durable timer
    # an event another task (or this one) publishes, or none within 0.3 s
    {"wait": {"event": EVENT, "timeout": "0.3s", "on_timeout": "{'timed_out': true}"}},
    {"publish": {"event": EVENT, "data": "{'n': 1}"}},
]


def leaf() -> st.SearchStrategy[dict[str, Any]]:
    def build(choice: tuple[str, str]) -> dict[str, Any]:
        protocol, expr = choice
        body: dict[str, Any] = {"protocol": protocol, "retry": {"max_attempts": 2, "initial_backoff": "0.001s"}}
        if expr:
            body["input"] = expr
        return {"id": f"n{next(_ids)}", "step": body}

    steps = st.sampled_from(LEAVES).map(build)
    waits = st.sampled_from(WAITS).map(lambda wait: {"id": f"n{next(_ids)}", **wait})
    return st.one_of(steps, steps, steps, waits)


def composite(children: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """A composite node of any kind, sometimes with a timeout (short enough to cut some runs)."""
    timeouts = st.sampled_from([None, None, "0.01s", "0.2s"])
    return st.tuples(kinds(children), timeouts).map(lambda t: {**t[0], "timeout": t[1]} if t[1] else t[0])


def kinds(children: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    many = st.lists(children, min_size=1, max_size=3)
    return st.one_of(
        many.map(lambda c: {"id": f"n{next(_ids)}", "sequence": {"children": c}}),
        st.tuples(many, st.sampled_from(["JOIN_POLICY_ALL", "JOIN_POLICY_ANY"]), st.booleans()).map(
            lambda t: {"id": f"n{next(_ids)}", "parallel": {"children": t[0], "join": t[1], "fail_fast": t[2]}}
        ),
        children.map(
            lambda body: {"id": f"n{next(_ids)}", "map": {"items": "[1, 2, 3]", "body": body, "max_concurrency": 2}}
        ),
        many.map(
            lambda c: {
                "id": f"n{next(_ids)}",
                "supervise": {"supervisor": "threshold_supervisor", "max_rounds": 2, "children": c},
            }
        ),
        # run as a subworkflow: stored first under its own id (see `store_subworkflows`)
        children.map(
            lambda body: {"id": f"n{next(_ids)}", "subworkflow": {"workflow_id": f"sub-{next(_ids)}"}, "define": body}
        ),
        st.tuples(children, children).map(
            lambda pair: {
                "id": f"n{next(_ids)}",
                "adaptive": {
                    "max_transitions": 3,
                    "states": [
                        {
                            "name": "a",
                            "node": pair[0],
                            "transitions": [{"when": "size(steps) > 100", "to": "a"}, {"to": "b"}],
                        },
                        {"name": "b", "node": pair[1], "terminal": True},
                    ],
                },
            }
        ),
        st.tuples(
            children, children, st.sampled_from([[], ["UNAVAILABLE"], ["INVALID_ARGUMENT", "UNKNOWN"]]), st.booleans()
        ).map(
            lambda t: {
                "id": f"n{next(_ids)}",
                # a cancelled task does not park to clean up: a handler that waits cannot run on a cancel
                "recover": {"body": t[0], "handler": t[1], "codes": t[2], "on_cancel": t[3] and not waits_inside(t[1])},
            }
        ),
        st.tuples(children, children).map(agent),
    )


def waits_inside(node: Any) -> bool:
    """Whether a wait or a sleep is anywhere in `node`, the definitions of its subworkflows (until
    stored) too."""
    if isinstance(node, dict):
        return "wait" in node or "sleep" in node or any(waits_inside(value) for value in node.values())
    return isinstance(node, list) and any(waits_inside(value) for value in node)


def waits_for_signal(node: Any) -> bool:
    """Whether a wait for SIGNAL (not for an event) is anywhere in `node`."""
    if isinstance(node, dict):
        wait = node.get("wait")
        return (isinstance(wait, dict) and "signal" in wait) or any(waits_for_signal(v) for v in node.values())
    return isinstance(node, list) and any(waits_for_signal(value) for value in node)


AGENT_SCRIPT = "[[{'id': 'a', 'name': 't0'}, {'id': 'b', 'name': 't1'}], [{'id': 'c', 'name': 't0'}]]"


def agent(tools: tuple[dict[str, Any], dict[str, Any]]) -> dict[str, Any]:
    """An agent whose model (testkit's scripted_model) calls both tools, then the first again."""
    model = {"id": f"n{next(_ids)}", "step": {"protocol": "scripted_model"}}
    messages = "[{'role': 'user', 'content': 'go', 'script': " + AGENT_SCRIPT + "}]"
    named = [{"name": f"t{i}", "node": node} for i, node in enumerate(tools)]
    return {"id": f"n{next(_ids)}", "agent": {"model": model, "messages": messages, "tools": named}}


definitions = st.recursive(leaf(), composite, max_leaves=8)


async def store_subworkflows(create: CreateWorkflow, node: dict[str, Any]) -> None:
    """Store (by `create(workflow_id, root)`) the workflow each generated subworkflow node runs,
    innermost first, in place of its `define`."""
    below = [
        *node.get("sequence", {}).get("children", []),
        *node.get("parallel", {}).get("children", []),
        *node.get("supervise", {}).get("children", []),
        *([node["map"]["body"]] if "map" in node else []),
        *(state["node"] for state in node.get("adaptive", {}).get("states", [])),
        *(node["recover"][part] for part in ("body", "handler") if "recover" in node),
        *(tool["node"] for tool in node.get("agent", {}).get("tools", [])),
    ]
    for child in below:
        await store_subworkflows(create, child)
    if "define" in node:
        body = node.pop("define")
        await store_subworkflows(create, body)
        await create(node["subworkflow"]["workflow_id"], body)
