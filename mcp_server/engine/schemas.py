"""JSON Schemas of wait nodes: checked when a workflow compiles, applied to signal payloads.

Validation is the `jsonschema` library's (the draft a schema names with `$schema`, 2020-12
otherwise, formats checked). Nothing is fetched: a `$ref` to another document does not resolve,
and a payload checked against such a schema is refused with a message saying so.

Patterns (`pattern`, `patternProperties`) are matched by RE2, in time linear in the payload:
with Python's backtracking `re`, a pattern such as `^(a+)+$` took seconds for a 24-character
signal and hours for 40, on the event loop, stopping every task of the server. A pattern RE2
cannot run (lookaround, backreferences) is refused when the workflow is created.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import re
from dataclasses import dataclass
from typing import Any

import jsonschema._keywords
import jsonschema._legacy_keywords
import jsonschema._utils
import re2
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
        MAX_PROBLEMS of them; [] when it is accepted. A check that takes more than MAX_CHECK_STEPS
        keyword evaluations is a problem of its own."""
        token = _steps_left.set([MAX_CHECK_STEPS])
        try:
            errors = sorted(self.validator.iter_errors(payload), key=lambda e: [str(p) for p in e.absolute_path])
        except Unresolvable as exc:
            return [(root, f"the schema refers to a document the server does not fetch ({exc})")]
        except _TooManySteps:
            return [(root, f"checking it against the schema takes more than {MAX_CHECK_STEPS:,} steps")]
        finally:
            _steps_left.reset(token)
        return [(_field(root, list(error.absolute_path)), error.message[:300]) for error in errors[:MAX_PROBLEMS]]


async def problems_off_loop(schema: PayloadSchema, value: Any, root: str) -> list[tuple[str, str]]:
    """`schema.problems(value, root)` in a worker thread: a check is bounded (MAX_CHECK_STEPS) but
    can take a second, which the event loop's other tasks should not wait."""
    return await asyncio.to_thread(schema.problems, value, root)


async def rejection(schema: PayloadSchema | None, value: Any, root: str) -> str:
    """What `schema` rejects in `value`, as one line naming each part (`root.<path>: why`), ''
    when it accepts it (or is None); checked off the event loop."""
    if schema is None:
        return ""
    return "; ".join(f"{field}: {why}" for field, why in await problems_off_loop(schema, value, root))


def compile_schema(schema: dict[str, Any], linear_only: bool = True, max_parts: int | None = None) -> PayloadSchema:
    """Check that `schema` is a JSON Schema of the draft it names (2020-12 by default) of at most
    `max_parts` objects and lists, whose patterns RE2 can run (unless not `linear_only`: a schema
    stored before that was checked, whose other patterns Python's `re` still matches), and
    compile it; raise SchemaInvalid with the reason if it is not."""
    if max_parts is not None and _more_parts_than(schema, max_parts):
        raise SchemaInvalid(
            f"has more than {max_parts:,} objects and lists; the limit is {max_parts:,} (MCP_LIMIT_MAX_SCHEMA_PARTS)"
        )
    cls = validators.validator_for(schema, default=validators.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except exceptions.SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path)
        raise SchemaInvalid(f"not a JSON Schema: {exc.message}" + (f" (at {where})" if where else "")) from None
    for where, pattern in _patterns(schema, "") if linear_only else ():
        try:
            linear_pattern(pattern)
        except ValueError as exc:
            raise SchemaInvalid(f"{exc} (at {where or '/'})") from None
    counted = _counted_classes.get(cls) or _counted_classes.setdefault(cls, _counting(cls))
    validator = counted(schema, format_checker=cls.FORMAT_CHECKER)
    if linear_only:  # a new definition: a `$ref` that can never resolve would refuse every payload
        _check_refs(validator, schema)
    return PayloadSchema(schema, validator)


# keywords whose values are data, not schemas: a "$ref" inside them is not a reference
_DATA_KEYWORDS = frozenset({"const", "enum", "examples", "default"})


def _check_refs(validator: Any, schema: Any) -> None:
    """Raise SchemaInvalid naming a `$ref` that does not resolve within the schema (another
    document, which the server does not fetch, or a pointer to nowhere). A schema with a nested
    `$id` changes the base its refs resolve against: left to the check of each payload."""
    refs: list[tuple[str, str]] = []
    pending: list[tuple[Any, str]] = [(schema, "")]
    while pending:
        part, where = pending.pop()
        if isinstance(part, dict):
            if where and ("$id" in part or ("id" in part and isinstance(part["id"], str))):
                return
            for key, value in part.items():
                if key == "$ref" and isinstance(value, str):
                    refs.append((value, f"{where}/$ref"))
                elif key not in _DATA_KEYWORDS:
                    pending.append((value, f"{where}/{key}"))
        elif isinstance(part, list):
            pending.extend((item, f"{where}/{index}") for index, item in enumerate(part))
    for ref, where in refs:
        try:
            validator._resolver.lookup(ref)
        except Unresolvable:
            raise SchemaInvalid(
                f"the $ref {ref[:200]!r} does not resolve within the schema (at {where}); the server fetches"
                " no other documents"
            ) from None


# Every keyword a check evaluates counts one step: a schema whose `anyOf` branches both recurse
# through `$ref` takes time exponential in the payload's depth (18 levels: 69 s on the event loop).
MAX_CHECK_STEPS = 100_000
_steps_left: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("schema_steps_left", default=None)
_counted_classes: dict[Any, Any] = {}


class _TooManySteps(Exception):
    pass


def _counting(cls: Any) -> Any:
    """`cls` with each keyword's check counted against the steps left (when a count is set)."""

    def counted(keyword: Any) -> Any:
        def check(*args: Any) -> Any:
            left = _steps_left.get()
            if left is not None:
                if left[0] == 0:
                    raise _TooManySteps
                left[0] -= 1
            return keyword(*args)

        return check

    checks = {name: counted(fn) for name, fn in cls.VALIDATORS.items()}
    return validators.extend(cls, validators=checks)  # type: ignore[no-untyped-call]


def _more_parts_than(schema: Any, most: int) -> bool:
    """Whether `schema` holds more than `most` objects and lists (counted until it does)."""
    left, pending = most, [schema]
    while pending:
        part = pending.pop()
        if isinstance(part, dict):
            pending.extend(part.values())
        elif isinstance(part, list):
            pending.extend(part)
        else:
            continue
        left -= 1
        if left < 0:
            return True
    return False


def _patterns(schema: Any, where: str) -> list[tuple[str, str]]:
    """Every regular expression in `schema`: the values of `pattern`, the keys of `patternProperties`."""
    found: list[tuple[str, str]] = []
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key == "pattern" and isinstance(value, str):
                found.append((f"{where}/pattern", value))
            elif key == "patternProperties" and isinstance(value, dict):
                found += [(f"{where}/patternProperties", p) for p in value]
            found += _patterns(value, f"{where}/{key}")
    elif isinstance(schema, list):
        for index, item in enumerate(schema):
            found += _patterns(item, f"{where}/{index}")
    return found


_QUIET = re2.Options()
_QUIET.log_errors = False  # a refused pattern is the workflow's error, not the server log's


def linear_pattern(pattern: str) -> Any:
    """`pattern` compiled by RE2, which matches in time linear in the text (cached); ValueError
    saying why when RE2 cannot run it (lookaround, backreferences)."""
    try:
        return _linear(pattern)
    except re2.error as exc:
        why = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise ValueError(
            f"the pattern {pattern[:200]!r} cannot be matched in linear time (RE2: {why});"
            " lookaround and backreferences are not supported"
        ) from None


@functools.lru_cache(maxsize=4096)
def _linear(pattern: str) -> Any:
    return re2.compile(pattern, _QUIET)


class _LinearSearch:
    """Stands in for `re` in jsonschema's keyword modules, which call `re.search(pattern, text)`
    for `pattern`, `patternProperties` and the properties those leave to `additionalProperties`
    and `unevaluatedProperties`: the same search, by RE2."""

    def search(self, pattern: str, text: str) -> Any:
        try:
            linear = _linear(pattern)
        except re2.error:  # only in a schema stored before patterns were checked (see compile_schema)
            return re.search(pattern, text)
        return linear.search(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(re, name)


for _module in (jsonschema._keywords, jsonschema._legacy_keywords, jsonschema._utils):
    _module.re = _LinearSearch()  # type: ignore[attr-defined]


def _field(root: str, path: list[Any]) -> str:
    """The path of a rejected part of the payload (a property name cut at 100 characters: a
    violation travels in the answer's trailing metadata, which gRPC keeps small)."""
    text = root
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{str(part)[:100]}"
    return text
