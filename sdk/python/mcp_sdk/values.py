"""Conversions between protobuf's JSON-like messages (Struct, Value) and plain Python values.

Struct numbers are doubles on the wire; whole numbers come back as ints (`3`, not `3.0`), as a
JSON user expects. Values that JSON cannot hold are made storable: bytes become text, NaN and
infinities their names, anything else its `str`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from typing import Any

from google.protobuf import json_format, struct_pb2
from google.protobuf.message import Message

JsonValue = Any


def strict_json(text: str) -> JsonValue:
    """Parse JSON as the standard has it: NaN and Infinity (which Python's json accepts) are refused
    with ValueError, so an input cannot carry a value it will not get back; so is JSON nested past
    what Python's parser can descend."""

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON: use a string or null")

    try:
        return json.loads(text, parse_constant=refuse)
    except RecursionError:
        raise ValueError("nested too deeply to read (arrays and objects ~1,000 levels deep)") from None


def struct_to_dict(message: struct_pb2.Struct) -> dict[str, JsonValue]:
    """A Struct as a dict of plain values."""
    return {k: normalize(v) for k, v in json_format.MessageToDict(message).items()}


def value_to_python(message: struct_pb2.Value) -> JsonValue:
    """A Value as a plain value; an unset Value is None."""
    if message.WhichOneof("kind") is None:
        return None
    return normalize(json_format.MessageToDict(message))


def message_to_dict(message: Message) -> dict[str, JsonValue]:
    """Any message as a dict with the .proto field names, whole numbers as ints (for JSON output)."""
    return dict(normalize(json_format.MessageToDict(message, preserving_proto_field_name=True)))


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
    """Make a value storable as a Struct value (bytes and the like become text)."""
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
    """A plain value as a Value."""
    message = struct_pb2.Value()
    json_format.ParseDict(to_json_compatible(value), message)
    return message


def dict_to_struct(value: dict[str, JsonValue]) -> struct_pb2.Struct:
    """A dict as a Struct (see sendable_struct for one that must cross the wire)."""
    message = struct_pb2.Struct()
    message.update(to_json_compatible(value))
    return message


# protobuf parses at most 100 nested messages. An object costs three of them (Struct, map entry,
# Value), a list two (ListValue, Value); a few are left for the messages around the value.
MAX_SENDABLE_LEVELS = 96


def sendable_struct(value: dict[str, JsonValue]) -> struct_pb2.Struct:
    """dict_to_struct for a value about to be sent: ValueError, saying so, when it nests deeper
    than protobuf can parse (the receiver would refuse the whole message)."""
    if _deepest(value, _plain_children, MAX_SENDABLE_LEVELS, _protobuf_levels) > MAX_SENDABLE_LEVELS:
        raise ValueError("the value nests more objects or lists deep than protobuf can carry (about 32 objects)")
    return dict_to_struct(value)


def _protobuf_levels(item: Any) -> int:
    return 3 if isinstance(item, dict) else 2


def nesting_depth(value: JsonValue, stop_after: int) -> int:
    """How deeply objects and lists nest in `value` (a scalar is 0, `{"a": [1]}` is 2).

    Iterative, so a value nested far past Python's recursion limit (a CEL literal can be) is
    measured safely; counting stops once the depth passes `stop_after`."""
    if isinstance(value, dict) and not any(isinstance(v, (dict, list, tuple)) for v in value.values()):
        return 1  # a flat object, the usual step input: no walk
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


def _deepest(
    root: Any,
    children_of: Callable[[Any], Iterable[Any] | None],
    stop_after: int,
    levels_of: Callable[[Any], int] = lambda item: 1,
) -> int:
    """How deep `root` nests, counting `levels_of` each object or list (1 by default)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(root, 0)]
    while stack:
        item, depth = stack.pop()
        children = children_of(item)
        if children is None:
            continue
        depth += levels_of(item)
        deepest = max(deepest, depth)
        if deepest > stop_after:
            return deepest
        stack.extend((child, depth) for child in children)
    return deepest
