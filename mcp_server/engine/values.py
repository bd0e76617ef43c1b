"""Conversions between protobuf Struct/Value and the plain Python values the engine works on.

Struct numbers are doubles; whole numbers are handed to CEL as ints so that `input.count + 1`
works as a JSON user expects (CEL never mixes int and double implicitly).
"""

from __future__ import annotations

import math
from typing import Any

from google.protobuf import json_format, struct_pb2

JsonValue = Any


def struct_to_dict(message: struct_pb2.Struct) -> dict[str, JsonValue]:
    return {k: normalize(v) for k, v in json_format.MessageToDict(message).items()}


def value_to_python(message: struct_pb2.Value) -> JsonValue:
    if message.WhichOneof("kind") is None:
        return None
    return normalize(json_format.MessageToDict(message))


def normalize(value: JsonValue) -> JsonValue:
    """Turn integral floats into ints, recursively, and leave everything else as is."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: normalize(v) for k, v in value.items()}
    if isinstance(value, list):
        return [normalize(v) for v in value]
    return value


def to_json_compatible(value: Any) -> JsonValue:
    """Make a CEL or plugin result storable as a Struct value (bytes and the like become text)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {str(k): to_json_compatible(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_compatible(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def python_to_value(value: JsonValue) -> struct_pb2.Value:
    message = struct_pb2.Value()
    json_format.ParseDict(to_json_compatible(value), message)
    return message


def dict_to_struct(value: dict[str, JsonValue]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(to_json_compatible(value))
    return message


def as_object(value: JsonValue) -> dict[str, JsonValue]:
    """A step's input must be an object: anything else is wrapped as {"value": ...}."""
    if isinstance(value, dict):
        return value
    if value is None:
        return {}
    return {"value": value}


def nesting_depth(value: JsonValue, stop_after: int) -> int:
    """How deeply objects and lists nest in `value` (a scalar is 0, `{"a": [1]}` is 2).

    Iterative, so a value nested far past Python's recursion limit (a CEL literal can be) is
    measured safely; counting stops once the depth passes `stop_after`."""
    deepest = 0
    stack: list[tuple[JsonValue, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        depth += 1
        deepest = max(deepest, depth)
        if deepest > stop_after:
            return deepest
        stack.extend((child, depth) for child in children)
    return deepest


def message_depth(message: struct_pb2.Struct | struct_pb2.Value | struct_pb2.ListValue, stop_after: int) -> int:
    """`nesting_depth` of a Struct, Value or ListValue, read from the message itself."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(message, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, struct_pb2.Value):
            kind = item.WhichOneof("kind")
            if kind == "struct_value":
                item = item.struct_value
            elif kind == "list_value":
                item = item.list_value
            else:
                continue
        depth += 1
        deepest = max(deepest, depth)
        if deepest > stop_after:
            return deepest
        children = item.fields.values() if isinstance(item, struct_pb2.Struct) else item.values
        stack.extend((child, depth) for child in children)
    return deepest


class ValueTooDeep(ValueError):
    """A value nests deeper than the limit; the message says how deep and what the limit is."""

    def __init__(self, what: str, depth: int, limit: int) -> None:
        # Measuring stops just past the limit, so the exact depth of a deeper value is not known.
        super().__init__(f"{what} nests more than {limit} levels deep; the limit is {limit} (MCP_LIMIT_MAX_VALUE_DEPTH)")
        self.depth = depth
        self.limit = limit


def check_depth(value: JsonValue, limit: int, what: str) -> None:
    """Raise ValueTooDeep if `value` nests deeper than `limit`."""
    depth = nesting_depth(value, limit)
    if depth > limit:
        raise ValueTooDeep(what, depth, limit)
