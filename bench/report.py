"""Printing benchmark tables and collecting their figures for bench/results/latest.json."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from bench.harness import Stat

REDIS = os.environ.get("MCP_BENCH_REDIS", "redis://127.0.0.1:6379/0")
RESULTS: dict[str, Any] = {}


def table(title: str, rows: Sequence[tuple[str, Stat | float | str, str]]) -> None:
    print(f"\n{title}")
    print(f"  {'measure':<52}{'median':>12}{'min':>12}{'max':>12}  note")
    for name, stat, note in rows:
        if isinstance(stat, Stat):
            print(f"  {name:<52}{stat.median:>12.3f}{min(stat.runs):>12.3f}{max(stat.runs):>12.3f}  {note}")
            RESULTS[f"{title} / {name}"] = stat.as_dict()
        else:
            print(f"  {name:<52}{stat!s:>12}{'':>24}  {note}")
            RESULTS[f"{title} / {name}"] = stat
