"""The web console: tasks, workflows and protocols in a browser, live.

It is a client of the public gRPC API only (through `mcp_sdk.Client`), so it runs inside the
server (`--console-listen`) or apart from it (`mcp console --server ADDR`) alike.
"""
