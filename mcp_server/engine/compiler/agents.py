"""Compiling agent nodes: the model asked each round, the conversation it starts with, and the
tools it may call (each a node, with the JSON schema of its arguments)."""

from __future__ import annotations

import math
import re

from mcp_sdk.proto import workflow_pb2
from mcp_sdk.workflow_tree import default_node_id
from mcp_server.engine.attempts import USAGE_NAME
from mcp_server.engine.compiler.fields import expression, rounds
from mcp_server.engine.compiler.scope import Scope, builds, compile_node
from mcp_server.engine.compiler.workflow_scope import schema_checks
from mcp_server.engine.plan import AgentPlan, AgentToolPlan
from mcp_server.engine.schemas import SchemaInvalid, compile_schema
from mcp_server.engine.values import struct_to_dict

TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # what model APIs take as a function's name
MAX_TOOLS = 64
MAX_DESCRIPTION = 1024
DEFAULT_ROUNDS = 10
MAX_BUDGET_NAMES = 16


@builds("agent")
def compile_agent(node_id: str, agent: workflow_pb2.AgentNode, path: str, scope: Scope, depth: int) -> AgentPlan | None:
    model = None
    if agent.HasField("model"):
        model = compile_node(agent.model, f"{path}.model", scope, depth + 1, default_node_id(agent.model, 0))
    else:
        scope.violations.add(f"{path}.model", "an agent node needs a model: the node asked each round")
    if not agent.messages:
        scope.violations.add(f"{path}.messages", "is required: CEL giving the conversation to start with")
    messages = expression(agent.messages, f"{path}.messages", scope)
    if len(agent.tools) > MAX_TOOLS:
        scope.violations.add(f"{path}.tools", f"{len(agent.tools)} tools; at most {MAX_TOOLS}")
    tools = [_tool(tool, f"{path}.tools[{i}]", scope, depth, i + 1) for i, tool in enumerate(agent.tools)]
    names = [tool.name for tool in agent.tools]
    for i, name in enumerate(names):
        if name in names[:i]:
            scope.violations.add(f"{path}.tools[{i}].name", f"duplicate tool name {name!r}")
    most = rounds(
        agent.max_rounds, scope.max_rounds, f"{path}.max_rounds", scope, min(DEFAULT_ROUNDS, scope.max_rounds)
    )
    budget = _budget(agent, f"{path}.budget", scope)
    if model is None or messages is None or any(tool is None for tool in tools):
        return None
    return AgentPlan(node_id, model, messages, tuple(t for t in tools if t is not None), most, budget)


def _budget(agent: workflow_pb2.AgentNode, path: str, scope: Scope) -> tuple[tuple[str, float], ...]:
    if len(agent.budget) > MAX_BUDGET_NAMES:
        scope.violations.add(path, f"{len(agent.budget)} usage names; at most {MAX_BUDGET_NAMES}")
    for name, cap in agent.budget.items():
        if not USAGE_NAME.fullmatch(name):
            scope.violations.add(f"{path}[{name[:80]!r}]", "a usage name is 1-128 characters, none a control character")
        if not (math.isfinite(cap) and cap > 0):
            scope.violations.add(f"{path}[{name[:80]!r}]", "must be a number above 0")
    return tuple(sorted(agent.budget.items()))


def _tool(tool: workflow_pb2.AgentTool, path: str, scope: Scope, depth: int, index: int) -> AgentToolPlan | None:
    if not TOOL_NAME.match(tool.name):
        scope.violations.add(f"{path}.name", "must be 1-64 letters, digits, '_' or '-' (what a model calls it by)")
    if len(tool.description) > MAX_DESCRIPTION:
        scope.violations.add(f"{path}.description", f"is {len(tool.description)} characters; at most {MAX_DESCRIPTION}")
    parameters = struct_to_dict(tool.parameters) if tool.HasField("parameters") else {"type": "object"}
    schema = None
    try:
        schema = compile_schema(parameters, **schema_checks(scope))
    except SchemaInvalid as exc:
        scope.violations.add(f"{path}.parameters", str(exc))
    if parameters.get("type", "object") != "object":
        scope.violations.add(f"{path}.parameters", "must describe an object: a call's arguments are one")
    if not tool.HasField("node"):
        scope.violations.add(f"{path}.node", "a tool needs a node: what runs a call")
        return None
    node = compile_node(tool.node, f"{path}.node", scope, depth + 1, default_node_id(tool.node, index))
    if node is None:
        return None
    return AgentToolPlan(tool.name, tool.description, parameters, schema, node)
