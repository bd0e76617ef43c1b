"""Enforce the field rules declared in the protos (`(mcp.v1.rules)`, validate.proto).

Rules are read once per message type from the descriptors, then every request is checked
before its handler runs; all violations are reported together, each naming its field.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from mcp_sdk.proto import validate_pb2
from mcp_server.errors import FieldViolation, InvalidArgument

RULES: Any = validate_pb2.rules  # the typed stubs do not model extension descriptors


class _Check:
    """One field's rules, with what every request's check asks of them read out once (reading
    the descriptor and the rules message again on each request cost more than the check)."""

    def __init__(self, field: FieldDescriptor, rules: validate_pb2.FieldRules) -> None:
        self.rules = rules
        self.pattern = re.compile(rules.pattern) if rules.pattern else None
        self.key_pattern = re.compile(rules.key_pattern) if rules.key_pattern else None
        self.name: str = field.name
        self.repeated: bool = field.is_repeated
        self.singular_message = field.message_type is not None and not field.is_repeated
        self.is_map = _is_map(field)
        self.required: bool = rules.required
        self.max_len: int = rules.max_len
        self.min: int | None = rules.min if rules.has_min else None
        self.max: int | None = rules.max if rules.has_max else None


@cache
def _checks(descriptor: Descriptor) -> tuple[tuple[_Check, ...], tuple[FieldDescriptor, ...]]:
    """The rule checks of a message type, and its message fields that have rules inside."""
    checks = []
    nested = []
    for field in descriptor.fields:
        options = field.GetOptions()
        if options.HasExtension(RULES):
            checks.append(_Check(field, options.Extensions[RULES]))
        if (
            field.message_type is not None
            and not field.message_type.GetOptions().map_entry
            and _has_rules(field.message_type)
        ):
            nested.append(field)
    return tuple(checks), tuple(nested)


@cache
def _has_rules(descriptor: Descriptor) -> bool:
    return any(f.GetOptions().HasExtension(RULES) for f in descriptor.fields)


def violations_of(message: Message, prefix: str = "") -> list[FieldViolation]:
    found: list[FieldViolation] = []
    checks, nested = _checks(message.DESCRIPTOR)
    for check in checks:
        found += _check(message, check, f"{prefix}{check.name}")
    for field in nested:
        if not field.is_repeated and message.HasField(field.name):
            found += violations_of(getattr(message, field.name), f"{prefix}{field.name}.")
    return found


def _check(message: Message, check: _Check, path: str) -> list[FieldViolation]:
    value = getattr(message, check.name)
    repeated, max_len = check.repeated, check.max_len
    present = message.HasField(check.name) if check.singular_message else bool(value)
    if check.required and not present:
        return [FieldViolation(path, "is required")]
    problems = []
    if repeated and max_len and len(value) > max_len:
        problems.append(f"has {len(value)} entries; at most {max_len} are allowed")
    if check.is_map:
        return [FieldViolation(path, p) for p in problems] + _map_entry_violations(value, check, path)
    if isinstance(value, str):
        if max_len and len(value) > max_len:
            problems.append(f"is {len(value)} characters; at most {max_len} are allowed")
        elif value and check.pattern is not None and not check.pattern.fullmatch(value):
            problems.append(f"must match {check.rules.pattern}")
    if isinstance(value, int) and not isinstance(value, bool) and not repeated:
        if check.min is not None and value < check.min:
            problems.append(f"must be at least {check.min}")
        if check.max is not None and value > check.max:
            problems.append(f"must be at most {check.max}")
    return [FieldViolation(path, p) for p in problems]


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def _map_entry_violations(entries: Any, check: _Check, path: str) -> list[FieldViolation]:
    rules, found = check.rules, []
    for key in sorted(entries):
        shown = key if len(key) <= 40 else key[:40] + "..."
        where = f"{path}[{shown!r}]"
        if rules.key_max_len and len(key) > rules.key_max_len:
            found.append(
                FieldViolation(where, f"key is {len(key)} characters; at most {rules.key_max_len} are allowed")
            )
        elif check.key_pattern is not None and not check.key_pattern.fullmatch(key):
            found.append(FieldViolation(where, f"key must match {rules.key_pattern}"))
        value = entries[key]
        if rules.value_max_len and isinstance(value, str) and len(value) > rules.value_max_len:
            found.append(
                FieldViolation(where, f"value is {len(value)} characters; at most {rules.value_max_len} are allowed")
            )
    return found


def validate_request(message: Message) -> None:
    """Raise InvalidArgument listing every field of `message` that breaks its declared rules."""
    found = violations_of(message)
    if found:
        first = found[0]
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise InvalidArgument(f"{first.field} {first.description}{more}", violations=found)
