"""The `mcp` command-line client."""
