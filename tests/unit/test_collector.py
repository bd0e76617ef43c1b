"""The server process freezes what it holds once started out of the cycle collector's way
(api/server.py tune_collector), unless told not to. Run in a child interpreter: freezing is
for the whole process, and the test process must not be changed by it."""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = """
import gc, sys
from mcp_server.api.server import tune_collector
from mcp_server.settings import settings_from
tune_collector(settings_from([], {**({"MCP_GC_FREEZE": sys.argv[1]} if sys.argv[1] else {})}))
print(gc.get_freeze_count())
"""


@pytest.mark.parametrize(("setting", "frozen"), [("", True), ("true", True), ("false", False)])
def test_the_started_server_s_objects_are_frozen_unless_turned_off(setting: str, frozen: bool) -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, setting], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert (int(out) > 10_000) == frozen, out  # the modules alone are tens of thousands of objects
