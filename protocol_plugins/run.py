"""`mcp-plugin MODULE [--listen ADDR] [--register ORCH]`: serve the `plugin` of any module."""

from __future__ import annotations

import importlib
import sys

from mcp_sdk.plugin import Plugin


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0].startswith("-"):
        sys.exit("usage: mcp-plugin MODULE [--listen ADDRESS] [--register ORCHESTRATOR] [--ttl SECONDS]")
    module = importlib.import_module(args[0])
    plugin = getattr(module, "plugin", None)
    if not isinstance(plugin, Plugin):
        sys.exit(f"{args[0]} has no `plugin` (a mcp_sdk.plugin.Plugin)")
    plugin.main(args[1:])


if __name__ == "__main__":
    main()
