"""The engine's view of values: the conversions (shared with the SDK, `mcp_sdk.values`) and the
shape rules a step's values follow (an input is an object; nesting is limited).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from google.protobuf import struct_pb2

from mcp_sdk.values import JsonValue, dict_to_struct, normalize, python_to_value, struct_to_dict, to_json_compatible, value_to_python

__all__ = ["JsonValue", "ValueTooDeep", "as_object", "check_depth", "dict_to_struct", "message_depth", "nesting_depth", "normalize",
           "python_to_value", "struct_to_dict", "to_json_compatible", "value_to_python"]


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
    return _deepest(value, _plain_children, stop_after)


def message_depth(message: struct_pb2.Struct | struct_pb2.Value | struct_pb2.ListValue, stop_after: int) -> int:
    """`nesting_depth` of a Struct, Value or ListValue, read from the message itself."""
    return _deepest(message, _message_children, stop_after)


def _plain_children(item: Any) -> Iterable[Any] | None:
    """An object's or list's members; None for a scalar."""
    if isinstance(item, dict):
        return item.values()
    return item if isinstance(item, (list, tuple)) else None


def _message_children(item: Any) -> Iterable[Any] | None:
    """A Struct's or ListValue's members (through a Value that holds one); None for a scalar."""
    if isinstance(item, struct_pb2.Value):
        kind = item.WhichOneof("kind")
        if kind not in ("struct_value", "list_value"):
            return None
        item = getattr(item, kind)
    return item.fields.values() if isinstance(item, struct_pb2.Struct) else item.values


def _deepest(root: Any, children_of: Callable[[Any], Iterable[Any] | None], stop_after: int) -> int:
    deepest = 0
    stack: list[tuple[Any, int]] = [(root, 0)]
    while stack:
        item, depth = stack.pop()
        children = children_of(item)
        if children is None:
            continue
        depth += 1
        deepest = max(deepest, depth)
        if deepest > stop_after:
            return deepest
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
