"""Enforce the field rules declared in the protos (`(mcp.v1.rules)`, validate.proto), and the
ranges protobuf itself sets for Timestamp and Duration values anywhere in a request.

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


# protobuf's own ranges (timestamp.proto, duration.proto): years 1 to 9999, and +-10,000 years
MIN_TIMESTAMP_SECONDS = -62_135_596_800
MAX_TIMESTAMP_SECONDS = 253_402_300_799
MAX_DURATION_SECONDS = 315_576_000_000
MAX_NANOS = 999_999_999
TIME_TYPES = ("google.protobuf.Timestamp", "google.protobuf.Duration")


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


def time_violations(message: Message, prefix: str = "") -> list[FieldViolation]:
    """Every Timestamp and Duration in `message` (nested, repeated and map values too) that is
    outside protobuf's ranges: the server would fail on it later, reading it back or doing
    arithmetic with it, where it should have been refused."""
    found: list[FieldViolation] = []
    for field in _time_paths(message.DESCRIPTOR):
        value = getattr(message, field.name)
        path = f"{prefix}{field.name}"
        if _is_map(field):
            items: Any = ((f"{path}[{key!r}]", value[key]) for key in sorted(value))
        elif field.is_repeated:
            items = ((f"{path}[{i}]", item) for i, item in enumerate(value))
        else:
            items = ((path, value),) if message.HasField(field.name) else ()
        for where, item in items:
            problem = _time_problem(item)
            if problem is not None:
                found.append(FieldViolation(where, problem))
            elif item.DESCRIPTOR.full_name not in TIME_TYPES:
                found += time_violations(item, f"{where}.")
    return found


def _time_problem(value: Message) -> str | None:
    kind = value.DESCRIPTOR.full_name
    seconds, nanos = getattr(value, "seconds", 0), getattr(value, "nanos", 0)
    if kind == "google.protobuf.Timestamp" and not (
        MIN_TIMESTAMP_SECONDS <= seconds <= MAX_TIMESTAMP_SECONDS and 0 <= nanos <= MAX_NANOS
    ):
        return "is not a valid timestamp: seconds must fall in the years 1 to 9999, nanos in 0 to 999999999"
    if kind == "google.protobuf.Duration" and not (
        abs(seconds) <= MAX_DURATION_SECONDS
        and abs(nanos) <= MAX_NANOS
        and (seconds == 0 or nanos == 0 or (seconds > 0) == (nanos > 0))
    ):
        return (
            f"is not a valid duration: seconds must be within +-{MAX_DURATION_SECONDS}, nanos within"
            f" +-{MAX_NANOS} and of the same sign as seconds"
        )
    return None


@cache
def _time_paths(descriptor: Descriptor) -> tuple[FieldDescriptor, ...]:
    """The fields of a message type that hold a Timestamp or Duration, or a message that does
    (at any depth; the type graph may be recursive, as a workflow's nodes are)."""
    holding = _types_holding_times(descriptor)
    return tuple(
        field
        for field in descriptor.fields
        if field.message_type is not None and _value_type(field).full_name in holding
    )


def _value_type(field: FieldDescriptor) -> Descriptor:
    """The message type a (message-typed) field holds: a map's value type, else its own."""
    own = field.message_type
    assert own is not None
    if _is_map(field):
        value: Descriptor | None = own.fields_by_name["value"].message_type
        return value if value is not None else own
    return own


@cache
def _types_holding_times(root: Descriptor) -> frozenset[str]:
    """The message types reachable from `root` that are, or reach, a Timestamp or Duration."""
    edges: dict[str, set[str]] = {}
    pending = [root]
    while pending:
        descriptor = pending.pop()
        if descriptor.full_name in edges:
            continue
        targets = edges[descriptor.full_name] = set()
        if descriptor.full_name in TIME_TYPES:
            continue
        for field in descriptor.fields:
            if field.message_type is not None:
                target = _value_type(field)
                targets.add(target.full_name)
                pending.append(target)
    holding = set(TIME_TYPES)
    changed = True
    while changed:  # a fixed point: the type graph may have cycles
        changed = False
        for name, targets in edges.items():
            if name not in holding and targets & holding:
                holding.add(name)
                changed = True
    return frozenset(holding & edges.keys())


@cache
def _enum_fields(descriptor: Descriptor) -> tuple[FieldDescriptor, ...]:
    return tuple(field for field in descriptor.fields if field.enum_type is not None)


def enum_violations(message: Message) -> list[FieldViolation]:
    """Every enum field of the request itself holding a number its enum does not define (proto3
    lets any number through; a newer client's value reaches an older server so): refused, where
    it would otherwise be read as the default or as nothing."""
    found = []
    for field in _enum_fields(message.DESCRIPTOR):
        assert field.enum_type is not None
        defined = field.enum_type.values_by_number
        value = getattr(message, field.name)
        items = enumerate(value) if field.is_repeated else ((None, value),)
        for i, number in items:
            if number not in defined:
                path = field.name if i is None else f"{field.name}[{i}]"
                found.append(FieldViolation(path, f"{number} is not a value of {field.enum_type.name}"))
    return found


def validate_request(message: Message) -> None:
    """Raise InvalidArgument listing every field of `message` that breaks its declared rules,
    every enum value of it its enum does not define, and every Timestamp or Duration in it
    outside protobuf's ranges."""
    found = violations_of(message)
    if _enum_fields(message.DESCRIPTOR):
        found += enum_violations(message)
    if _time_paths(message.DESCRIPTOR):
        found += time_violations(message)
    if found:
        first = found[0]
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise InvalidArgument(f"{first.field} {first.description}{more}", violations=found)
