"""Log lines as JSON (ORCH_LOG_FORMAT=json): one object a line, for a log shipper."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import orjson

#: Fields a log call may pass with `extra=` that the JSON line carries when present.
EXTRA_FIELDS = (
    "instance_id",
    "task_id",
    "attempt",
    "worker_id",
    "topic",
    "process_key",
    "traceparent",
)


#: The task a worker's handler runs for (set by the SDK in the handler's asyncio task): every
#: line logged in it, the handler's own included, carries its ids (TaskFields).
current_task: ContextVar[Mapping[str, Any] | None] = ContextVar("orch_current_task", default=None)


class TaskFields(logging.Filter):
    """Adds the ids of `current_task` to a record that does not carry them already. Add it to
    your own handler if your application configures logging itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = current_task.get()
        if fields:
            attributes = record.__dict__
            for name, value in fields.items():
                attributes.setdefault(name, value)
        return True


class JsonFormatter(logging.Formatter):
    """time (ISO 8601, UTC), level, logger, message; the EXTRA_FIELDS a record carries; and
    the exception's traceback, if any, as `exc_info`."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in EXTRA_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack_info"] = self.formatStack(record.stack_info)
        return orjson.dumps(line, default=str).decode()


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure(level: str, log_format: str) -> None:
    """The root logger's handler: text lines, or JSON ones (`log_format` "json")."""
    handler = logging.StreamHandler()
    handler.addFilter(TaskFields())
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    logging.basicConfig(level=level.upper(), handlers=[handler])
