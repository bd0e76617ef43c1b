"""Regular expressions in the bundled plugins, matched by RE2 in time linear in the text: a
backtracking engine takes time quadratic (or worse) in a text for patterns as plain as
`\\s*\\bvery\\b` or `(?:[A-Z][a-z]+ )+Inc`, and hours for a megabyte, while the plugin serves no one."""

from __future__ import annotations

from typing import Any

from mcp_server.engine.schemas import linear_pattern

# Python's \s (RE2's is ASCII only)
SPACE = r"[\s\x0b\x1c-\x1f\x85\p{Z}]"


def request_pattern(pattern: str, field: str) -> Any:
    """A pattern a request gave in `field`, compiled by RE2; ValueError (the step's
    INVALID_ARGUMENT) naming the field when RE2 cannot run it."""
    try:
        return linear_pattern(pattern)
    except ValueError as exc:
        raise ValueError(f"{field}: {exc}") from None
