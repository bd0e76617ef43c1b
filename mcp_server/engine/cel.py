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

from mcp_server.engine.cel_cost import COMPREHENSION, CostModel, cost_model
from mcp_server.engine.values import ValueTooDeep, nesting_depth, normalize, to_json_compatible
from mcp_server.settings import Limits

VARIABLES = ("input", "prev", "steps", "output", "children", "item", "index", "round", "feedback", "error")
# Where each variable has a value (docs/cel.md); the compiler admits a name only where it has one.
EVERYWHERE = frozenset({"input", "prev", "steps"})
IN_MAP_BODY = frozenset({"item", "index"})
IN_SUPERVISED_CHILD = frozenset({"round", "feedback", "children"})
IN_TRANSITION = frozenset({"output"})
IN_HANDLER = frozenset({"error"})
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
    # how its work grows with what it reads, and its budget (None: linearly, not estimated)
    cost: CostModel | None = None

    def evaluate(self, variables: dict[str, Any]) -> Any:
        if self.cost is not None and (problem := self.cost.problem(variables)):
            raise ExpressionError(f"`{self.source}` {problem} (MCP_LIMIT_MAX_CEL_COST)")
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


def compile_expression(
    source: str, limits: Limits | None = None, variables: frozenset[str] | None = None
) -> Expression:
    """Compile `source`; raise ExpressionError with the parser's message if it does not compile,
    naming the first function the evaluator lacks or variable that has no value here
    (`variables`; None skips the variable check), or past the limit of comprehensions."""
    limits = limits or Limits()
    comprehensions = len(COMPREHENSION.findall(source))
    if comprehensions > limits.max_expression_comprehensions:
        raise ExpressionError(
            f"expression uses {comprehensions} comprehensions (map, filter, all, exists);"
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
    names = frozenset(program.variables())
    cost = cost_model(source, names, limits.max_cel_cost) if limits.max_cel_cost > 0 else None  # 0: no budget
    return Expression(source, program, limits.max_value_depth, names, cost)
