"""ORCH_LOG_FORMAT=json: one JSON object a line, with the ids a log call passes."""

from __future__ import annotations

import logging
import sys

import orjson

from orchestrator.logs import JsonFormatter, TaskFields, current_task


def _record(**extra: object) -> logging.LogRecord:
    logger = logging.getLogger("orchestrator.test")
    return logger.makeRecord(
        "orchestrator.test", logging.WARNING, __file__, 1, "task %s failed", ("t1",), None,
        extra=extra,
    )  # fmt: skip


def test_a_line_is_one_json_object() -> None:
    line = JsonFormatter().format(_record())
    assert "\n" not in line
    data = orjson.loads(line)
    assert data["level"] == "WARNING"
    assert data["logger"] == "orchestrator.test"
    assert data["message"] == "task t1 failed"
    assert data["time"].endswith("+00:00")
    assert "instance_id" not in data


def test_extra_fields_are_carried() -> None:
    record = _record(instance_id="i1", task_id="t1", attempt=2, worker_id="w@h", other="x")
    data = orjson.loads(JsonFormatter().format(record))
    assert data["instance_id"] == "i1"
    assert data["task_id"] == "t1"
    assert data["attempt"] == 2
    assert data["worker_id"] == "w@h"
    assert "other" not in data


def test_an_exception_is_one_field() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.getLogger("x").makeRecord(
            "x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )
    data = orjson.loads(JsonFormatter().format(record))
    assert "ValueError: boom" in data["exc_info"]


def test_lines_logged_while_a_task_runs_carry_its_ids() -> None:
    fields = TaskFields()
    record = _record()
    token = current_task.set({"task_id": "t1", "instance_id": "i1", "attempt": 2})
    try:
        assert fields.filter(record)
        passed = _record(task_id="explicit")
        fields.filter(passed)
    finally:
        current_task.reset(token)
    data = orjson.loads(JsonFormatter().format(record))
    assert (data["task_id"], data["instance_id"], data["attempt"]) == ("t1", "i1", 2)
    assert orjson.loads(JsonFormatter().format(passed))["task_id"] == "explicit"
    outside = _record()
    fields.filter(outside)
    assert "task_id" not in orjson.loads(JsonFormatter().format(outside))
