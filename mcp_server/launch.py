"""The server's entry point (`python -m mcp_server`, `mcp-server`): what must be set before gRPC is
imported, then the server."""

import os
import sys


def main() -> None:
    # The server forks only to exec (plugin processes, --processes children), never to go on running
    # gRPC in a child, so gRPC's fork handlers have nothing to do; on uvloop, whose spawn forks, they
    # printed "skipping fork() handlers" for every process started. gRPC reads this as it is imported.
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    from mcp_server.api.server import main as serve

    serve(sys.argv[1:])
