"""`python -m mcp_server`: run the orchestrator (see `--help`)."""

from mcp_server.launch import main

main()
