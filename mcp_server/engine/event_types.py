"""TaskEventType's numbers as plain attributes: `E.TASK_EVENT_TYPE_STEP_STARTED` and so on.

The generated enum wrapper answers the same names through a `__getattr__` that costs about
3 us a lookup; events are made, counted and routed on every step, so the server uses these."""

from __future__ import annotations

from types import SimpleNamespace

from mcp_sdk.proto import task_pb2

E = SimpleNamespace(**dict(task_pb2.TaskEventType.items()))
