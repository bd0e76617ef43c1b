"""The work a CEL evaluation may do, estimated before it starts.

The evaluator (the Rust binding) offers no cost budget and holds the event loop and the GIL
while it runs. Three shapes cost far more than what they read:
- a `map` or `filter` builds its list by copying it once per item (10,000 items: ~3 s), and
  comprehensions nest: items ** (comprehensions, plus one if any is a map or filter);
- a chain of `+` copies what it has built once per operand (200 copies of a 100,000-item list:
  75 s and 2 GB): the operators squared, halved, times the items;
- a value named many times is copied each time into the result (`[input.xs, input.xs, ...]`:
  100 copies of 100,000 items, 1 GB).
Items are what lies under the paths an expression names (list members, object entries, each KB
of text). An evaluation whose estimate passes `max_cost` is refused before it runs.
"""

from __future__ import annotations

import collections
import re
from dataclasses import dataclass
from typing import Any

COMPREHENSION = re.compile(r"\.\s*(map|filter|all|exists|exists_one)\s*\(")
QUADRATIC = frozenset({"map", "filter"})
# a variable and the fields read from it: `steps.draft.text`
REFERENCE = re.compile(r"(?<![\w.'\"])([A-Za-z_]\w*)((?:\s*\.\s*[A-Za-z_]\w*)*)")
TEXT_BYTES_PER_ITEM = 1024
CHEAP_CONCATENATIONS = 2  # up to this many `+` and no comprehension: linear, not estimated

Path = tuple[str, ...]


@dataclass(frozen=True)
class CostModel:
    """How an expression's work grows with the items it reads, and the budget it has."""

    exponent: int  # comprehensions, plus one if any is a map or filter (0: none and few `+`)
    factor: float  # for chains of `+`: the operators squared, halved; at least 1
    paths: tuple[Path, ...]  # the variables and fields it reads
    repeats: tuple[tuple[Path, int], ...]  # paths named more than once, with the extra times
    max_cost: float
    max_items: int  # the most items it may read, at its exponent and factor

    def problem(self, variables: dict[str, Any]) -> str:
        """Why evaluating with `variables` would pass the budget, or ""."""
        if self.exponent and _items([_node(variables, p) for p in self.paths], self.max_items) > self.max_items:
            return (
                f"reads more than {self.max_items:,} items (list members, object entries, KB of text):"
                " with its comprehensions and `+` that is past the evaluation budget"
            )
        for path, extra in self.repeats:
            most = int(self.max_cost // extra)
            if _items([_node(variables, path)], most) > most:
                return (
                    f"names {'.'.join(path)} {extra + 1} times, each a copy of more than {most:,} items:"
                    " that is past the evaluation budget"
                )
        return ""


def cost_model(source: str, variables: frozenset[str], max_cost: float) -> CostModel | None:
    """The cost model of `source` reading `variables`; None when its work is linear in what it
    reads (no comprehension, at most CHEAP_CONCATENATIONS `+`, no path named twice)."""
    comprehensions = COMPREHENSION.findall(source)
    concatenations = source.count("+")
    named = collections.Counter(
        (root, *(name.strip() for name in fields.split(".")[1:]))
        for root, fields in REFERENCE.findall(source)
        if root in variables
    )
    repeats = tuple((path, count - 1) for path, count in sorted(named.items()) if count > 1)
    estimated = bool(comprehensions) or concatenations > CHEAP_CONCATENATIONS
    if not estimated and not repeats:
        return None
    exponent = len(comprehensions) + (1 if QUADRATIC.intersection(comprehensions) else 0)
    exponent = max(exponent, 1) if estimated else 0
    factor = max(1.0, concatenations**2 / 2)
    most = 0
    if exponent:
        most = int((max_cost / factor) ** (1 / exponent))
        while (most + 1) ** exponent * factor <= max_cost:  # the float root can fall short
            most += 1
    return CostModel(exponent, factor, tuple(sorted(named)), repeats, max_cost, most)


def _node(variables: dict[str, Any], path: Path) -> Any:
    """The value at `path` (as deep as the fields lead through objects)."""
    node = variables.get(path[0])
    for name in path[1:]:
        if not isinstance(node, dict) or name not in node:
            break
        node = node[name]
    return node


def _items(values: list[Any], stop_after: int) -> int:
    """List members, object entries and KB of text in `values` (each value once; counting
    stops once past `stop_after`)."""
    items, seen, pending = 0, set(), []
    for value in values:
        if id(value) not in seen:
            seen.add(id(value))
            pending.append(value)
    while pending and items <= stop_after:
        value = pending.pop()
        if isinstance(value, dict):
            items += len(value)
            pending.extend(value.values())
        elif isinstance(value, (list, tuple)):
            items += len(value)
            pending.extend(value)
        elif isinstance(value, (str, bytes)):
            items += len(value) // TEXT_BYTES_PER_ITEM
    return items
