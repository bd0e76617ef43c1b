"""Texts the engine keeps that may carry what a client or a plugin gave (a state a router named,
a value echoed in an error): bounded, so that a failed step's record, its events and the task's
error stay small whatever went into them."""

from __future__ import annotations

MAX_MESSAGE_CHARS = 4096


def clipped(text: str, most: int = MAX_MESSAGE_CHARS) -> str:
    """`text`, or its first `most` characters and how many more there were."""
    if len(text) <= most:
        return text
    return f"{text[:most]}… ({len(text) - most:,} more characters)"
