"""CEL expressions: compiled once with the workflow, evaluated against a documented context.

The variables every expression may use are listed in `VARIABLES` and documented in
docs/cel.md. CEL cannot run code, loops are bounded by the size of its inputs, and the length
of an expression is limited at validation time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import cel

from mcp_server.engine.values import ValueTooDeep, nesting_depth, normalize, to_json_compatible
from mcp_server.settings import Limits

VARIABLES = ("input", "prev", "steps", "output", "children", "item", "index", "round", "feedback")
# Where each variable has a value (docs/cel.md); the compiler admits a name only where it has one.
EVERYWHERE = frozenset({"input", "prev", "steps"})
IN_MAP_BODY = frozenset({"item", "index"})
IN_SUPERVISED_CHILD = frozenset({"round", "feedback", "children"})
IN_TRANSITION = frozenset({"output"})
# The functions the evaluator has (the Rust binding's standard library, without the optional
# Python extras); operators (`_+_`, `@in`, `!_`) are not names a user writes.
FUNCTIONS = frozenset(
    {
        "size",
        "contains",
        "startsWith",
        "endsWith",
        "matches",
        "int",
        "uint",
        "double",
        "string",
        "bytes",
        "timestamp",
        "duration",
        "dyn",
        "type",
        "getFullYear",
        "getMonth",
        "getDate",
        "getDayOfMonth",
        "getDayOfWeek",
        "getDayOfYear",
        "getHours",
        "getMinutes",
        "getSeconds",
        "getMilliseconds",
        "of",
        "none",
        "hasValue",
        "value",
        "orValue",
        "or",
        "ofNonZeroValue",
    }
)
NAMESPACES = frozenset({"optional"})
_BOUND = re.compile(r"\.\s*(?:map|filter|all|exists|exists_one)\s*\(\s*([A-Za-z_][A-Za-z0-9_]*)\s*,")
COMPREHENSION = re.compile(r"\.\s*(map|filter|all|exists|exists_one)\s*\(")
# the evaluator builds the list of a map or filter by copying it once per item (quadratic: 10,000
# items take ~3 s), holding the GIL, so the work of an evaluation is bounded before it starts
QUADRATIC = frozenset({"map", "filter"})
TEXT_BYTES_PER_ITEM = 1024  # text counts too: a comprehension can copy it once per item


class ExpressionError(Exception):
    """An expression failed to compile or to evaluate; the message says which and why."""


@dataclass(frozen=True)
class Expression:
    """A compiled CEL expression and its source text."""

    source: str
    program: Any
    max_depth: int = 32
    # the variables the expression reads: only these are converted and handed to CEL
    names: frozenset[str] = frozenset(VARIABLES)
    # an evaluation's work grows as (items it reads) ** cost_exponent: one per comprehension,
    # one more if any is a map or filter; evaluations estimated past max_cost are refused
    cost_exponent: int = 0
    max_cost: float = 0.0

    def evaluate(self, variables: dict[str, Any]) -> Any:
        if self.cost_exponent and self.max_cost:
            self._check_cost(variables)
        try:
            result = self.program.execute(variables)
        except KeyError as exc:
            raise ExpressionError(f"no such key {exc} in `{self.source}`") from None
        except Exception as exc:  # the cel binding raises plain TypeError/ValueError/RuntimeError
            raise ExpressionError(f"`{self.source}`: {exc}") from None
        depth = nesting_depth(result, self.max_depth)
        if depth > self.max_depth:
            raise ExpressionError(str(ValueTooDeep(f"`{self.source}` yields a value that", depth, self.max_depth)))
        return normalize(to_json_compatible(result))

    def _check_cost(self, variables: dict[str, Any]) -> None:
        """Raise ExpressionError if the values read hold more items (list members, object
        entries, KB of text) than max_cost allows at this expression's cost_exponent."""
        most = int(self.max_cost ** (1 / self.cost_exponent))
        while (most + 1) ** self.cost_exponent <= self.max_cost:  # the float root can fall short
            most += 1
        items, pending = 0, [v for k, v in variables.items() if k in self.names]
        while pending and items <= most:
            value = pending.pop()
            if isinstance(value, dict):
                items += len(value)
                pending.extend(value.values())
            elif isinstance(value, (list, tuple)):
                items += len(value)
                pending.extend(value)
            elif isinstance(value, (str, bytes)):
                items += len(value) // TEXT_BYTES_PER_ITEM
        if items > most:
            raise ExpressionError(
                f"`{self.source}` reads more than {most:,} items (list members, object entries, KB of text);"
                f" with its comprehensions that is past the evaluation budget (MCP_LIMIT_MAX_CEL_COST)"
            )


def compile_expression(
    source: str, limits: Limits | None = None, variables: frozenset[str] | None = None
) -> Expression:
    """Compile `source`; raise ExpressionError with the parser's message if it does not compile,
    naming the first function the evaluator lacks or variable that has no value here
    (`variables`; None skips the variable check), or past the limit of comprehensions."""
    limits = limits or Limits()
    comprehensions = COMPREHENSION.findall(source)
    if len(comprehensions) > limits.max_expression_comprehensions:
        raise ExpressionError(
            f"expression uses {len(comprehensions)} comprehensions (map, filter, all, exists);"
            f" the limit is {limits.max_expression_comprehensions}"
        )
    try:
        program = cel.compile(source)
    except Exception as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ExpressionError(first_line) from None
    unknown = sorted(f for f in program.functions() if f[0] not in "_@!" and f not in FUNCTIONS)
    if unknown:
        raise ExpressionError(f"unknown function {unknown[0]!r}")
    if variables is not None:
        # The binding lists comprehension variables (`x` in `list.map(x, ...)`) among the free ones.
        allowed = variables | NAMESPACES | set(_BOUND.findall(source))
        strangers = sorted(v for v in program.variables() if v not in allowed)
        if strangers:
            where = ", ".join(sorted(variables))
            raise ExpressionError(
                f"unknown variable {strangers[0]!r}; the variables here are {where} (see docs/cel.md)"
            )
    exponent = len(comprehensions) + (1 if QUADRATIC.intersection(comprehensions) else 0)
    return Expression(
        source, program, limits.max_value_depth, frozenset(program.variables()), exponent, limits.max_cel_cost
    )
