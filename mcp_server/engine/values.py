"""The engine's view of values: the conversions (shared with the SDK, `mcp_sdk.values`) and the
shape rules a step's values follow (an input is an object; nesting is limited).
"""

from __future__ import annotations

from mcp_sdk.values import (
    JsonValue,
    dict_to_struct,
    message_depth,
    nesting_depth,
    normalize,
    python_to_value,
    struct_to_dict,
    to_json_compatible,
    value_to_python,
)

__all__ = [
    "JsonValue",
    "ValueTooDeep",
    "as_object",
    "check_depth",
    "dict_to_struct",
    "message_depth",
    "nesting_depth",
    "normalize",
    "python_to_value",
    "struct_to_dict",
    "to_json_compatible",
    "value_to_python",
]


def as_object(value: JsonValue) -> dict[str, JsonValue]:
    """A step's input must be an object: anything else is wrapped as {"value": ...}."""
    if isinstance(value, dict):
        return value
    if value is None:
        return {}
    return {"value": value}


class ValueTooDeep(ValueError):
    """A value nests deeper than the limit; the message says how deep and what the limit is."""

    def __init__(self, what: str, depth: int, limit: int) -> None:
        # Measuring stops just past the limit, so the exact depth of a deeper value is not known.
        super().__init__(
            f"{what} nests more than {limit} levels deep; the limit is {limit} (MCP_LIMIT_MAX_VALUE_DEPTH)"
        )
        self.depth = depth
        self.limit = limit


def check_depth(value: JsonValue, limit: int, what: str) -> None:
    """Raise ValueTooDeep if `value` nests deeper than `limit`."""
    depth = nesting_depth(value, limit)
    if depth > limit:
        raise ValueTooDeep(what, depth, limit)
