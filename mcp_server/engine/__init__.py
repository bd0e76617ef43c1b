"""The orchestration core: compile a workflow into a plan, run the plan.

Pure asyncio. It imports no gRPC server code and no store driver: it is handed a
`ProtocolCaller` for plugin calls and a `Store` for state (see `ports.py`).
"""
