"""Log lines as JSON (ORCH_LOG_FORMAT=json): one object a line, for a log shipper."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import orjson

#: Fields a log call may pass with `extra=` that the JSON line carries when present.
EXTRA_FIELDS = ("instance_id", "task_id", "attempt", "worker_id", "topic", "process_key")


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
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    logging.basicConfig(level=level.upper(), handlers=[handler])
