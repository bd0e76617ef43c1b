"""Payload: one JSON-shaped value flowing through a run, held as protobuf or Python or both.

A plugin's output arrives as a `Struct` and usually leaves, unchanged, as the next plugin's
input; converting it to Python and back on the way would cost more than the call. A Payload
keeps the form it was made in and converts only when asked (CEL needs Python, a checkpoint
needs serialized bytes), caching each form. Payloads are never mutated after construction.

Sizes and digests are of the value serialized as a `google.protobuf.Value`: the unit the
store keeps and the client reads back with ReadValue.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from google.protobuf import struct_pb2

from mcp_server.engine.values import message_depth, nesting_depth, to_json_compatible


def varint(number: int) -> bytes:
    """Protobuf's base-128 varint encoding of a non-negative int."""
    out = bytearray()
    while number > 0x7F:
        out.append((number & 0x7F) | 0x80)
        number >>= 7
    out.append(number)
    return bytes(out)


def length_delimited(field_number: int, data: bytes) -> bytes:
    """One length-delimited protobuf field: appending it to a serialized message sets (or, for a
    message field, merges into) that field, without building the message in Python."""
    return varint(field_number << 3 | 2) + varint(len(data)) + data


def to_python(value: struct_pb2.Value) -> Any:
    """A Value as plain Python; whole-number doubles become ints (CEL never mixes the two)."""
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return {k: to_python(v) for k, v in value.struct_value.fields.items()}
    if kind == "list_value":
        return [to_python(v) for v in value.list_value.values]
    if kind == "number_value":
        number = value.number_value
        return int(number) if number.is_integer() and abs(number) < 2**53 else number
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    return None


def struct_to_python(struct: struct_pb2.Struct) -> dict[str, Any]:
    return {k: to_python(v) for k, v in struct.fields.items()}


def to_value(python: Any) -> struct_pb2.Value:
    message = struct_pb2.Value()
    _fill(message, to_json_compatible(python))
    return message


def _fill(message: struct_pb2.Value, python: Any) -> None:
    if python is None:
        message.null_value = struct_pb2.NULL_VALUE
    elif isinstance(python, bool):
        message.bool_value = python
    elif isinstance(python, (int, float)):
        message.number_value = python
    elif isinstance(python, str):
        message.string_value = python
    elif isinstance(python, dict):
        fields = message.struct_value.fields
        message.struct_value.SetInParent()
        for key, item in python.items():
            _fill(fields[key], item)
    else:
        message.list_value.SetInParent()
        values = message.list_value.values
        for item in python:
            _fill(values.add(), item)


class Payload:
    """A JSON value; build one with the `of_*` constructors."""

    __slots__ = ("_bytes", "_depth", "_python", "_sha", "_struct", "_value")

    def __init__(self) -> None:
        self._struct: struct_pb2.Struct | None = None
        self._value: struct_pb2.Value | None = None
        self._python: Any = _MISSING
        self._bytes: bytes | None = None
        self._sha: str | None = None
        self._depth: tuple[int, int] | None = None  # (stop_after, depth) of the last measure

    # ---- construction ------------------------------------------------------------------------
    @classmethod
    def of_python(cls, python: Any) -> Payload:
        payload = cls()
        payload._python = python
        return payload

    @classmethod
    def of_struct(cls, struct: struct_pb2.Struct) -> Payload:
        payload = cls()
        payload._struct = struct
        return payload

    @classmethod
    def of_value(cls, value: struct_pb2.Value) -> Payload:
        if value.WhichOneof("kind") == "struct_value":
            return cls.of_struct(value.struct_value)
        payload = cls()
        payload._value = value
        return payload

    @classmethod
    def of_bytes(cls, data: bytes) -> Payload:
        """From a serialized google.protobuf.Value."""
        payload = cls.of_value(struct_pb2.Value.FromString(data))
        payload._bytes = data
        return payload

    @classmethod
    def object_of(cls, items: Mapping[str, Payload]) -> Payload:
        """An object whose members are these payloads (copied at C speed, not via Python)."""
        struct = struct_pb2.Struct()
        for key, item in items.items():
            struct.fields[key].CopyFrom(item.value())
        return cls.of_struct(struct)

    @classmethod
    def list_of(cls, items: Sequence[Payload]) -> Payload:
        value = struct_pb2.Value()
        value.list_value.SetInParent()
        for item in items:
            value.list_value.values.add().CopyFrom(item.value())
        return cls.of_value(value)

    # ---- views -------------------------------------------------------------------------------
    def python(self) -> Any:
        if self._python is _MISSING:
            if self._struct is not None:
                self._python = struct_to_python(self._struct)
            else:
                self._python = to_python(self.value())
        return self._python

    def value(self) -> struct_pb2.Value:
        if self._value is None:
            if self._struct is not None:
                self._value = struct_pb2.Value(struct_value=self._struct)
            else:
                self._value = to_value(self._python)
        return self._value

    def struct(self) -> struct_pb2.Struct:
        """The value as a Struct; a value that is not an object comes wrapped as {"value": ...}
        (a plugin's input and output are always objects), and null as {}."""
        if self._struct is not None:
            return self._struct
        value = self.value()
        kind = value.WhichOneof("kind")
        if kind == "struct_value":
            self._struct = value.struct_value
            return self._struct
        struct = struct_pb2.Struct()
        if kind not in (None, "null_value"):
            struct.fields["value"].CopyFrom(value)
        return struct

    def as_object(self) -> Payload:
        """This payload if it is an object, else the object a plugin would receive for it."""
        return self if self.is_object() else Payload.of_struct(self.struct())

    def is_object(self) -> bool:
        if self._struct is not None:
            return True
        if self._value is not None:
            return self._value.WhichOneof("kind") == "struct_value"
        return isinstance(self._python, dict)

    def serialized(self) -> bytes:
        """The value serialized as a google.protobuf.Value, deterministically: protobuf writes an
        object's fields in its map's order, which differs between processes (and between a value
        and the same value read back), and equal values must have equal bytes, since a large one
        is kept once under its sha256 and shared by the tasks that hold it (a rerun, say)."""
        if self._bytes is None:
            if self._struct is not None and self._value is None:
                struct = self._struct.SerializeToString(deterministic=True)
                self._bytes = length_delimited(5, struct)  # Value.struct_value
            else:
                self._bytes = self.value().SerializeToString(deterministic=True)
        return self._bytes

    def depth(self, stop_after: int) -> int:
        """How deeply objects and lists nest (see values.nesting_depth), from whichever form is at
        hand; measured once (a payload is checked where it enters and again where it is kept).

        A value too small to nest deeper than `stop_after` is not walked: every level costs at
        least two bytes serialized (a field's tag and length), so half its size bounds its depth,
        and that bound is returned instead."""
        if self._depth is not None and self._depth[0] == stop_after:
            return self._depth[1]
        size = self._known_size()
        if size is not None and size // 2 <= stop_after:
            depth = size // 2
        elif self._python is not _MISSING:
            depth = nesting_depth(self._python, stop_after)
        else:
            depth = message_depth(self._struct if self._struct is not None else self.value(), stop_after)
        self._depth = (stop_after, depth)
        return depth

    def _known_size(self) -> int | None:
        """The serialized size, if it can be had without converting (protobuf computes it in C)."""
        if self._bytes is not None:
            return len(self._bytes)
        if self._value is not None:
            return self._value.ByteSize()
        if self._struct is not None:
            inner = self._struct.ByteSize()
            return inner + 1 + max(1, (inner.bit_length() + 6) // 7)  # as a Value: struct_value's tag and length
        return None

    @property
    def size(self) -> int:
        return len(self.serialized())

    @property
    def sha256(self) -> str:
        if self._sha is None:
            self._sha = hashlib.sha256(self.serialized()).hexdigest()
        return self._sha

    def __repr__(self) -> str:
        return f"Payload({self.python()!r})"


class _Missing:
    __slots__ = ()


_MISSING: Any = _Missing()
EMPTY = Payload.of_python({})
