"""Logging setup: plain text or one JSON object per line, carrying task_id and step_path."""

from __future__ import annotations

import json
import logging

from mcp_server.engine.logcontext import step_path_var, task_id_var


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if task_id := task_id_var.get():
            entry["task_id"] = task_id
        if step_path := step_path_var.get():
            entry["step_path"] = step_path
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class ContextFilter(logging.Filter):
    """Adds task_id and step_path to text records too."""

    def filter(self, record: logging.LogRecord) -> bool:
        task_id, step_path = task_id_var.get(), step_path_var.get()
        record.task_context = f" [task {task_id} {step_path}]".rstrip() if task_id else ""
        return True


def configure(fmt: str = "text", level: int = logging.INFO) -> None:
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.addFilter(ContextFilter())
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s%(task_context)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
