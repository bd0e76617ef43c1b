"""Requests built from plain values: workflow definitions (a message, a dict, JSON or YAML text)
and task submissions."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import grpc
from google.protobuf import json_format

from mcp_sdk.errors import FieldViolation, McpError
from mcp_sdk.proto import task_pb2, workflow_pb2
from mcp_sdk.values import JsonValue, sendable_struct, strict_json


def submit_request(
    workflow_id: str,
    input: Mapping[str, JsonValue] | None,
    request_id: str | None,
    priority: int,
    labels: Mapping[str, str] | None,
    version: int,
    queue_timeout: float | None = None,
) -> task_pb2.SubmitTaskRequest:
    """A SubmitTaskRequest; a request id is generated when none is given (so that a retried
    submission is one task). An input nested too deeply raises McpError INVALID_ARGUMENT."""
    try:
        input_data = sendable_struct(dict(input or {}))
    except ValueError as exc:  # too deep for protobuf: refused here, as the server would refuse it
        raise McpError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"input_data: {exc}",
            reason="VALUE_TOO_DEEP",
            violations=(FieldViolation("input_data", str(exc)),),
        ) from None
    request = task_pb2.SubmitTaskRequest(
        workflow_id=workflow_id,
        workflow_version=version,
        input_data=input_data,
        priority=priority,
        request_id=request_id or uuid.uuid4().hex,
        labels=dict(labels or {}),
    )
    if queue_timeout is not None:
        request.queue_timeout.FromNanoseconds(round(queue_timeout * 1e9))
    return request


def workflow_from(definition: workflow_pb2.Workflow | Mapping[str, Any] | str) -> workflow_pb2.Workflow:
    """A Workflow message from itself, a dict, or JSON or YAML text (YAML needs PyYAML: `mcp-sdk[yaml]`).

    A definition that does not fit the Workflow message raises McpError INVALID_ARGUMENT naming
    what is wrong, as the server would."""
    if isinstance(definition, workflow_pb2.Workflow):
        return definition
    data: Any = definition
    if isinstance(definition, str):
        try:
            data = strict_json(definition)
        except ValueError:  # JSONDecodeError is one
            data = _load_yaml(definition)
    if not isinstance(data, Mapping):
        raise _bad_definition(f"a workflow definition is an object, not {type(data).__name__}")
    try:
        return json_format.ParseDict(dict(data), workflow_pb2.Workflow())
    except json_format.ParseError as exc:
        raise _bad_definition(str(exc)) from None
    except RecursionError:
        raise _bad_definition("nested too deeply (or a value that contains itself)") from None


def _load_yaml(text: str) -> Any:
    """YAML text as plain values. Aliases are refused past MAX_YAML_VALUES values once expanded
    (nine aliases of nine aliases, eight deep, are 43 million objects from a page of text) or
    when one holds itself."""
    try:
        import yaml
    except ImportError:
        raise _bad_definition(
            "this text is not JSON, and reading YAML needs PyYAML: pip install 'mcp-sdk[yaml]'"
        ) from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise _bad_definition(f"neither JSON nor YAML: {exc}") from None
    except RecursionError:
        raise _bad_definition("nested too deeply to read") from None
    finally:
        loader.dispose()


MAX_YAML_VALUES = 1_000_000


def _check_expansion(root: Any) -> None:
    """Count the values a composed YAML document becomes, each alias expanded (a node reached
    twice counts twice, computed once); refuse one past MAX_YAML_VALUES or holding itself."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        children = _yaml_children(node)
        if children_done:
            open_nodes.discard(id(node))
            sizes[id(node)] = 1 + sum(sizes[id(child)] for child in children)
            if sizes[id(node)] > MAX_YAML_VALUES:
                raise _bad_definition(f"its aliases expand to more than {MAX_YAML_VALUES:,} values")
            continue
        if id(node) in sizes:
            continue
        if id(node) in open_nodes:
            raise _bad_definition("an alias refers to a value that contains it")
        open_nodes.add(id(node))
        stack.append((node, True))
        stack.extend((child, False) for child in children if id(child) not in sizes)


def _yaml_children(node: Any) -> list[Any]:
    if isinstance(node.value, list):  # a sequence's items, or a mapping's (key, value) pairs
        return [part for item in node.value for part in (item if isinstance(item, tuple) else (item,))]
    return []


def _bad_definition(description: str) -> McpError:
    return McpError(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"malformed workflow definition: {description}",
        reason="MALFORMED_DEFINITION",
        violations=(FieldViolation("workflow", description),),
    )
