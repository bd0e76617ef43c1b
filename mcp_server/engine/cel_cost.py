"""The work a CEL evaluation may do, estimated before it starts.

The evaluator (the Rust binding) offers no cost budget, holds the event loop and the GIL while it
runs, and is quadratic in two places: a `map` or `filter` builds its list by copying it once per
item (10,000 items: ~3 s), and a chain of `+` copies what it has built once per operand (200
copies of a 100,000-item list: 75 s and 2 GB). So an expression that has comprehensions or
several `+` has its cost estimated from the items under the paths it reads (list members,
object entries, each KB of text): items ** (comprehensions, plus one if any is a map or filter)
times (the `+` operators squared, halved). Past `max_cost` it is refused before it runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

COMPREHENSION = re.compile(r"\.\s*(map|filter|all|exists|exists_one)\s*\(")
QUADRATIC = frozenset({"map", "filter"})
# a variable and the fields read from it: `steps.draft.text`
REFERENCE = re.compile(r"(?<![\w.'\"])([A-Za-z_]\w*)((?:\s*\.\s*[A-Za-z_]\w*)*)")
TEXT_BYTES_PER_ITEM = 1024
CHEAP_CONCATENATIONS = 2  # up to this many `+` and no comprehension: linear, not estimated


@dataclass(frozen=True)
class CostModel:
    """How an expression's work grows with the items it reads."""

    exponent: int  # comprehensions, plus one if any is a map or filter; at least 1
    factor: float  # for chains of `+`: the operators squared, halved; at least 1
    paths: tuple[tuple[str, ...], ...]  # the variables and fields it reads

    def most_items(self, max_cost: float) -> int:
        """The most items an evaluation may read within `max_cost`."""
        most = int((max_cost / self.factor) ** (1 / self.exponent))
        while (most + 1) ** self.exponent * self.factor <= max_cost:  # the float root can fall short
            most += 1
        return most

    def items_read(self, variables: dict[str, Any], stop_after: int) -> int:
        """Items under the paths read (counting stops once past `stop_after`)."""
        items, seen, pending = 0, set(), []
        for root, *fields in self.paths:
            node = variables.get(root)
            for name in fields:
                if not isinstance(node, dict) or name not in node:
                    break
                node = node[name]
            if id(node) not in seen:
                seen.add(id(node))
                pending.append(node)
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


def cost_model(source: str, variables: frozenset[str]) -> CostModel | None:
    """The cost model of `source` reading `variables`; None when its work is linear in what it
    reads (no comprehension, at most CHEAP_CONCATENATIONS `+`) and needs no estimate."""
    comprehensions = COMPREHENSION.findall(source)
    concatenations = source.count("+")
    if not comprehensions and concatenations <= CHEAP_CONCATENATIONS:
        return None
    exponent = max(1, len(comprehensions) + (1 if QUADRATIC.intersection(comprehensions) else 0))
    paths = {
        (root, *(name.strip() for name in fields.split(".")[1:]))
        for root, fields in REFERENCE.findall(source)
        if root in variables
    }
    return CostModel(exponent, max(1.0, concatenations**2 / 2), tuple(sorted(paths)))
