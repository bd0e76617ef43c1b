"""Conversions between protobuf's JSON-like messages (Struct, Value) and plain Python values.

Struct numbers are doubles on the wire; whole numbers come back as ints (`3`, not `3.0`), as a
JSON user expects. Values that JSON cannot hold are made storable: bytes become text, NaN and
infinities their names, anything else its `str`.
"""

from __future__ import annotations

import math
from typing import Any

from google.protobuf import json_format, struct_pb2
from google.protobuf.message import Message

JsonValue = Any


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
    """A dict as a Struct."""
    message = struct_pb2.Struct()
    message.update(to_json_compatible(value))
    return message
