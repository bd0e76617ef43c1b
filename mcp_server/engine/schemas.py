"""JSON Schemas of wait nodes: checked when a workflow compiles, applied to signal payloads.

Validation is the `jsonschema` library's (the draft a schema names with `$schema`, 2020-12
otherwise, formats checked). Nothing is fetched: a `$ref` to another document does not resolve,
and a payload checked against such a schema is refused with a message saying so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jsonschema import exceptions, validators
from referencing.exceptions import Unresolvable

MAX_PROBLEMS = 15


class SchemaInvalid(ValueError):
    """The schema is not a JSON Schema; the message says why."""


@dataclass(frozen=True, eq=False)
class PayloadSchema:
    """A compiled JSON Schema."""

    source: dict[str, Any]
    validator: Any

    def problems(self, payload: Any, root: str = "payload") -> list[tuple[str, str]]:
        """What in `payload` the schema rejects: (field path from `root`, why), at most
        MAX_PROBLEMS of them; [] when it is accepted."""
        try:
            errors = sorted(self.validator.iter_errors(payload), key=lambda e: [str(p) for p in e.absolute_path])
        except Unresolvable as exc:
            return [(root, f"the schema refers to a document the server does not fetch ({exc})")]
        return [(_field(root, list(error.absolute_path)), error.message[:300]) for error in errors[:MAX_PROBLEMS]]


def compile_schema(schema: dict[str, Any]) -> PayloadSchema:
    """Check that `schema` is a JSON Schema of the draft it names (2020-12 by default) and compile
    it; raise SchemaInvalid with the reason if it is not."""
    cls = validators.validator_for(schema, default=validators.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except exceptions.SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path)
        raise SchemaInvalid(f"not a JSON Schema: {exc.message}" + (f" (at {where})" if where else "")) from None
    return PayloadSchema(schema, cls(schema, format_checker=cls.FORMAT_CHECKER))


def _field(root: str, path: list[Any]) -> str:
    text = root
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text
