"""JSON values given on the command line: inline, or @FILE holding one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mcp_sdk.values import strict_json


def parse_json(text: str) -> Any:
    """A JSON value, or @FILE holding one."""
    return strict_json(Path(text[1:]).read_text() if text.startswith("@") else text)


def parse_input(text: str | None) -> dict[str, Any]:
    """--input: a JSON object, or @FILE holding one."""
    if not text:
        return {}
    value = parse_json(text)
    if not isinstance(value, dict):
        raise SystemExit("--input must be a JSON object")
    return value
