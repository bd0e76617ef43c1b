"""Random requests for any RPC, built from the message descriptors alone: every field kind, the
edges of every range (NaN, years 1 and 9999, nanos out of range, unknown enum values, long and
odd strings), nested and repeated messages, maps and oneofs. Ids seen in earlier answers are
reused, so that requests reach past the lookup of what they name. Seeded: the same seed makes
the same requests."""

from __future__ import annotations

import math
import random
from collections import defaultdict
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

TEXT = [
    "", " ", "a", "echo", "root", "root/s0", "s0", "../../x", "\x00", "a" * 5000, "%s%n", "🙂" * 40, "*", "-1",
    "9" * 30, "input.x", "0 * * * *", "Europe/Berlin", "Not/AZone", "a b", "A" * 129,
]  # fmt: skip
INTEGERS = [0, 1, -1, 2, 7, 100, 10**6, 2**31 - 1, -(2**31), 2**53]
FLOATS = [0.0, -0.0, 1.5, -1.0, 1e308, -1e308, math.nan, math.inf, -math.inf, 1e-300]
TIMESTAMP_SECONDS = [0, 1, -62_135_596_801, -62_135_596_800, 253_402_300_799, 253_402_300_800, 1_900_000_000, 2**40]
DURATION_SECONDS = [0, 1, -5, 3600, 86_400 * 400, 315_576_000_001, 2**62]
NANOS = [0, 5, -1, 999_999_999, 10**9]
TYPE = FieldDescriptor


class RandomRequests:
    """Makes random messages; `remember` feeds it the ids found in answers."""

    def __init__(self, seed: int) -> None:
        self.random = random.Random(seed)
        self.known: defaultdict[str, list[str]] = defaultdict(list)

    def fill(self, message: Message, depth: int = 0) -> Message:
        name = message.DESCRIPTOR.full_name
        if name == "google.protobuf.Struct":
            value = self.json_value()
            if isinstance(value, dict):
                message.update(value)  # type: ignore[attr-defined]
        elif name == "google.protobuf.Value":
            json_format.ParseDict(self.json_value(), message)
        elif name == "google.protobuf.Timestamp":
            message.seconds = self.random.choice(TIMESTAMP_SECONDS)  # type: ignore[attr-defined]
            message.nanos = self.random.choice(NANOS)  # type: ignore[attr-defined]
        elif name == "google.protobuf.Duration":
            message.seconds = self.random.choice(DURATION_SECONDS)  # type: ignore[attr-defined]
            message.nanos = self.random.choice(NANOS)  # type: ignore[attr-defined]
        else:
            self._fill_fields(message, depth)
        return message

    def remember(self, answer: Message) -> None:
        """Keep the ids (`*_id` strings) of an answer, at any depth, to name them in requests."""
        for field, value in answer.ListFields():
            if _is_map(field):
                continue
            if field.message_type is not None:
                for item in list(value)[:5] if field.is_repeated else [value]:
                    self.remember(item)
            elif field.type == TYPE.TYPE_STRING and not field.is_repeated and field.name.endswith("_id") and value:
                self.known[field.name].append(value)

    def json_value(self, depth: int = 0) -> Any:
        kind = self.random.randint(0, 5 if depth < 4 else 3)
        if kind == 0:
            return None
        if kind == 1:
            return self.random.random() < 0.5
        if kind == 2:
            return self.random.choice([0, 1, -1, 1.5, 1e300, 2**60])
        if kind == 3:
            return self.random.choice(TEXT[:12])
        if kind == 4:
            return [self.json_value(depth + 1) for _ in range(self.random.randint(0, 4))]
        keys = ["a", "x", "text", "", "$ref", "signal"]
        return {self.random.choice(keys): self.json_value(depth + 1) for _ in range(self.random.randint(0, 4))}

    def _fill_fields(self, message: Message, depth: int) -> None:
        chosen_oneofs: set[str] = set()
        for field in message.DESCRIPTOR.fields:
            oneof = field.containing_oneof
            if oneof is not None:
                if oneof.name in chosen_oneofs or self.random.random() < 0.5:
                    continue
                chosen_oneofs.add(oneof.name)
            if self.random.random() < 0.3:
                continue
            value = getattr(message, field.name)
            if _is_map(field):
                self._fill_map(field.message_type, value, depth)
            elif field.is_repeated:
                for _ in range(self.random.randint(0, 4)):
                    if field.message_type is None:
                        value.append(self._scalar(field))
                    elif depth < 4:
                        self.fill(value.add(), depth + 1)
            elif field.message_type is not None:
                if depth < 5:
                    self.fill(value, depth + 1)
            else:
                setattr(message, field.name, self._scalar(field))

    def _fill_map(self, entry: Descriptor, value: Any, depth: int) -> None:
        key_field, value_field = entry.fields_by_name["key"], entry.fields_by_name["value"]
        for _ in range(self.random.randint(0, 3)):
            key = self._scalar(key_field)
            if value_field.message_type is None:
                value[key] = self._scalar(value_field)
            elif depth < 4:
                self.fill(value[key], depth + 1)

    def _scalar(self, field: FieldDescriptor) -> Any:
        kind = field.type
        if kind == TYPE.TYPE_STRING:
            known = self.known.get(field.name)
            if known and self.random.random() < 0.5:
                return self.random.choice(known)
            if self.random.random() < 0.8:
                return self.random.choice(TEXT)
            return "".join(chr(self.random.randint(1, 0x2FFF)) for _ in range(self.random.randint(1, 30)))
        if kind == TYPE.TYPE_BYTES:
            return self.random.choice([b"", b"\x00\xff", b"x" * 100, b'{"a": 1}'])
        if kind == TYPE.TYPE_BOOL:
            return self.random.random() < 0.5
        if kind in (TYPE.TYPE_DOUBLE, TYPE.TYPE_FLOAT):
            return self.random.choice(FLOATS)
        if kind == TYPE.TYPE_ENUM:
            return self.random.choice([v.number for v in field.enum_type.values] + [99, -1])
        number = self.random.choice(INTEGERS)
        if kind in (TYPE.TYPE_UINT32, TYPE.TYPE_FIXED32):
            return abs(number) % 2**32
        if kind in (TYPE.TYPE_UINT64, TYPE.TYPE_FIXED64):
            return self.random.choice([abs(number), 2**63, 2**64 - 1])
        if kind in (TYPE.TYPE_INT32, TYPE.TYPE_SINT32, TYPE.TYPE_SFIXED32):
            return max(min(number, 2**31 - 1), -(2**31))
        return number


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry
