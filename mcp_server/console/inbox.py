"""Answering waits from the console: for each step of a task that waits for a signal, its prompt
and a form built from its wait node's JSON Schema (a checkbox for a boolean, a text or number
field for a string or a number, a list for an enum, a JSON editor otherwise), and the signal a
submitted form sends. The server checks the payload against the schema; what it refuses comes
back beside the form's fields. A workflow's submit form is built from its input schema the same
way."""

from __future__ import annotations

import json
from typing import Any

from mcp_sdk.proto import task_pb2, workflow_pb2
from mcp_sdk.values import JsonValue, strict_json, struct_to_dict, value_to_python
from mcp_sdk.workflow_tree import node_at
from mcp_server.console.present import iso, json_text

SCALARS = {"boolean": "checkbox", "string": "text", "number": "number", "integer": "number"}


def fields_of(schema: dict[str, Any] | None) -> list[dict[str, Any]] | None:
    """The form's fields for an object schema with properties; None: one JSON editor instead."""
    if not schema or schema.get("type") != "object" or not isinstance(schema.get("properties"), dict):
        return None
    required = [str(name) for name in schema.get("required") or ()]
    # a schema travels as a protobuf Struct, which keeps no order: the required fields first, as listed
    names = [n for n in required if n in schema["properties"]] + sorted(set(schema["properties"]) - set(required))
    fields = []
    for name in names:
        prop = schema["properties"][name]
        prop = prop if isinstance(prop, dict) else {}
        kind = "select" if isinstance(prop.get("enum"), list) else SCALARS.get(str(prop.get("type")), "json")
        fields.append(
            {
                "name": str(name),
                "kind": kind,
                "label": str(prop.get("title") or name),
                "help": str(prop.get("description") or ""),
                "required": name in required,
                "options": [str(o) for o in prop.get("enum", [])] if kind == "select" else [],
                "integer": prop.get("type") == "integer",
                "enum": prop.get("enum") if kind == "select" else None,
                # what an empty field stands for when the workflow fills defaults (its JSON text)
                "default": json.dumps(prop["default"], ensure_ascii=False)[:200] if "default" in prop else None,
            }
        )
    return fields


def input_schema_of(workflow: workflow_pb2.Workflow) -> dict[str, Any] | None:
    """A workflow version's input schema, which its submit form is built from (None: unset)."""
    return struct_to_dict(workflow.input_schema) if workflow.HasField("input_schema") else None


def waiting_forms(
    steps: list[task_pb2.StepState], workflow: workflow_pb2.Workflow, answers: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    """A form for each step that waits for a signal now, with what was typed and refused last time."""
    forms = []
    for step in steps:
        if step.status != task_pb2.STEP_STATUS_WAITING or step.kind != "wait" or step.wait.received_sequence:
            continue
        node = node_at(workflow.root, step.path)
        wait = node.wait if node is not None else None
        schema = struct_to_dict(wait.schema) if wait is not None and wait.HasField("schema") else None
        answer = answers.get(step.path, {})
        forms.append(
            {
                "path": step.path,
                "signal": step.wait.signal,
                # a wait for an event: only a publish of it (with the key) answers it
                "event": step.wait.event,
                "key": step.wait.key,
                "condition": wait.condition if wait is not None else "",
                "deadline": iso(step.wait.deadline),
                "prompt": json_text(value_to_python(step.input)) if step.HasField("input") else None,
                "fields": fields_of(schema),
                "schema": json_text(schema) if schema else None,
                "typed": answer.get("typed", {}),
                "problem": answer.get("problem"),
                "violations": answer.get("violations", []),
            }
        )
    return forms


def payload_of(posted: dict[str, str], fields: list[dict[str, Any]] | None) -> JsonValue:
    """The signal's payload from a submitted form; ValueError naming the field that is wrong."""
    if fields is None:
        return strict_json(posted.get("json", "") or "null")
    payload: dict[str, JsonValue] = {}
    for field in fields:
        name, text = field["name"], posted.get(f"field.{field['name']}", "")
        if field["kind"] == "checkbox":
            payload[name] = f"field.{name}" in posted
        elif not text.strip():
            continue  # left empty: absent (the schema says whether it may be)
        elif field["kind"] == "number":
            try:
                payload[name] = int(text) if field["integer"] else float(text)
            except ValueError:
                raise ValueError(f"{field['label']}: {text!r} is not a number") from None
        elif field["kind"] == "select":
            payload[name] = next((o for o in field["enum"] if str(o) == text), text)
        elif field["kind"] == "json":
            try:
                payload[name] = strict_json(text)
            except ValueError as exc:
                raise ValueError(f"{field['label']}: not JSON ({exc})") from None
        else:
            payload[name] = text
    return payload
