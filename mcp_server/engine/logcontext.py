"""Which task and which step the code is running for, for log records (see telemetry/logs.py)."""

from __future__ import annotations

from contextvars import ContextVar

task_id_var: ContextVar[str] = ContextVar("task_id", default="")
step_path_var: ContextVar[str] = ContextVar("step_path", default="")
