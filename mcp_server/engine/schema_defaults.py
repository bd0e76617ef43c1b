"""The defaults an input schema declares, filled into an input (Workflow.fill_input_defaults).

A property the input lacks whose schema has a `default` gets a copy of it, at every level of
the input that is an object its schema describes with `properties` (an object filled in from a
default included). `$ref`s to a part of the same schema are followed. A `default` inside
`anyOf`, `oneOf`, `allOf`, `not` or `if`/`then`/`else` is not applied: which of those parts holds
is only known by checking the input, and the check comes after the filling.
"""

from __future__ import annotations

import copy
from typing import Any
from urllib.parse import unquote

MAX_REF_HOPS = 16  # a `$ref` to a `$ref` ... is followed this far (a cycle would never end)


def with_defaults(schema: Any, value: Any) -> Any:
    """`value` (an input as Python) with the defaults `schema` declares for what it lacks; the
    value given is not changed. Returns `value` itself when nothing was filled in."""
    return _filled(schema, value, schema)


def _filled(schema: Any, value: Any, root: Any) -> Any:
    schema = _resolved(schema, root)
    if not isinstance(value, dict) or not isinstance(schema, dict):
        return value
    properties = schema.get("properties")
    if not isinstance(properties, dict):
        return value
    result = value
    for name, part in properties.items():
        part = _resolved(part, root)
        if not isinstance(part, dict):
            continue
        if name in value:
            inner = _filled(part, value[name], root)
        elif "default" in part:
            inner = _filled(part, copy.deepcopy(part["default"]), root)
        else:
            continue
        if name not in value or inner is not value[name]:
            if result is value:
                result = dict(value)
            result[name] = inner
    return result


def _resolved(schema: Any, root: Any) -> Any:
    """`schema`, or the part of `root` its `$ref` names (a JSON pointer within the schema), as far
    as MAX_REF_HOPS refs lead; a ref that leads elsewhere or nowhere: {} (no defaults)."""
    for _ in range(MAX_REF_HOPS):
        if not isinstance(schema, dict) or not isinstance(schema.get("$ref"), str):
            return schema
        schema = _pointed(root, schema["$ref"])
    return {}


def _pointed(root: Any, ref: str) -> Any:
    if not ref.startswith("#"):
        return {}  # another document: never fetched
    part = root
    for token in filter(None, unquote(ref[1:]).split("/")):
        token = token.replace("~1", "/").replace("~0", "~")
        if isinstance(part, dict) and token in part:
            part = part[token]
        elif isinstance(part, list) and token.isdigit() and int(token) < len(part):
            part = part[int(token)]
        else:
            return {}
    return part
