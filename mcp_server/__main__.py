"""`python -m mcp_server`: run the orchestrator (see `--help`)."""

import sys

from mcp_server.api.server import main

main(sys.argv[1:])
