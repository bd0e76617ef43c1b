"""How deep values nest, measured three ways that must agree: plain values (the walker and its
flat-object shortcut), protobuf messages, and a Payload's bound from its serialized size."""

from __future__ import annotations

from typing import Any

from google.protobuf import struct_pb2
from hypothesis import given
from hypothesis import strategies as st

from mcp_sdk.values import message_depth, nesting_depth, python_to_value
from mcp_server.engine.payload import Payload

LIMIT = 32
scalars = st.one_of(st.none(), st.booleans(), st.integers(-1000, 1000), st.text(max_size=5))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=3), inner, max_size=3)),
    max_leaves=40,
)


def test_known_depths():
    assert nesting_depth(7, LIMIT) == 0
    assert nesting_depth({}, LIMIT) == 1
    assert nesting_depth({"a": 1, "b": "x"}, LIMIT) == 1
    assert nesting_depth({"a": [1]}, LIMIT) == 2
    assert nesting_depth([[[]]], LIMIT) == 3
    deep: Any = 1
    for _ in range(1000):  # far past Python's recursion limit
        deep = {"d": deep}
    assert nesting_depth(deep, LIMIT) == LIMIT + 1  # counting stops past the limit


@given(values)
def test_plain_and_message_depths_agree_and_the_size_bound_never_hides_a_deep_value(value: Any):
    depth = nesting_depth(value, LIMIT)
    assert message_depth(python_to_value(value), LIMIT) == depth
    for stop_after in (1, 2, 3, LIMIT):
        bounded = Payload.of_bytes(python_to_value(value).SerializeToString()).depth(stop_after)
        assert (bounded > stop_after) == (depth > stop_after)  # a bound, exact where it matters


def test_equal_values_have_equal_bytes_however_their_objects_were_built():
    """A large value is kept once under its sha256 and shared (by a rerun, say): protobuf writes an
    object's fields in its map's order, which differs between a value and the same value read
    back, and between processes, so a Payload serializes deterministically."""
    for size in range(3, 40):
        built = struct_pb2.Struct()
        built.update({f"key{n}": n for n in range(size)})
        read_back = struct_pb2.Struct.FromString(built.SerializeToString())
        reversed_order = struct_pb2.Struct()
        reversed_order.update({f"key{n}": n for n in reversed(range(size))})
        digests = {Payload.of_struct(s).sha256 for s in (built, read_back, reversed_order)}
        digests.add(Payload.of_python({f"key{n}": n for n in range(size)}).sha256)
        assert len(digests) == 1, size
