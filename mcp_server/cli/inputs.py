"""Values given on the command line: JSON (inline, or @FILE holding one), labels."""

from __future__ import annotations

import argparse
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


def parse_label(text: str) -> tuple[str, str]:
    """--label: `KEY=VALUE` (the value may hold `=`)."""
    key, equals, value = text.partition("=")
    if not key or not equals:
        raise argparse.ArgumentTypeError(f"a label is KEY=VALUE, not {text[:60]!r}")
    return key, value
