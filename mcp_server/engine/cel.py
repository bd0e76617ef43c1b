"""CEL expressions: compiled once with the workflow, evaluated against a documented context.

The variables every expression may use are listed in `VARIABLES` and documented in
docs/cel.md. CEL cannot run code, loops are bounded by the size of its inputs, and the length
of an expression is limited at validation time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cel

from mcp_server.engine.values import normalize, to_json_compatible

VARIABLES = ("input", "prev", "steps", "output", "children", "item", "index", "round", "feedback")


class ExpressionError(Exception):
    """An expression failed to compile or to evaluate; the message says which and why."""


@dataclass(frozen=True)
class Expression:
    """A compiled CEL expression and its source text."""

    source: str
    program: Any

    def evaluate(self, variables: dict[str, Any]) -> Any:
        try:
            result = self.program.execute(variables)
        except KeyError as exc:
            raise ExpressionError(f"no such key {exc} in `{self.source}`") from None
        except Exception as exc:  # the cel binding raises plain TypeError/ValueError/RuntimeError
            raise ExpressionError(f"`{self.source}`: {exc}") from None
        return normalize(to_json_compatible(result))


def compile_expression(source: str) -> Expression:
    """Compile `source`; raise ExpressionError with the parser's message if it does not compile."""
    try:
        program = cel.compile(source)
    except Exception as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ExpressionError(first_line) from None
    # Unknown variables are reported at evaluation: the binding lists comprehension
    # variables (`x` in `list.map(x, ...)`) among the free ones, so a compile-time check would
    # reject valid expressions.
    return Expression(source, program)
