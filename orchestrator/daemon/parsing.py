"""Turning raw AMQP bodies into wire models, with a reason for anything that is not one."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import orjson
from pydantic import ValidationError

from orchestrator.model.wire import (
    COMMAND_ADAPTER,
    REPORT_ADAPTER,
    Command,
    MessageBody,
    Report,
)


class Malformed(ValueError):
    """The message is not one we can process; str() is the dead-letter reason."""


def _load(body: bytes, max_bytes: int) -> object:
    if len(body) > max_bytes:
        raise Malformed(f"oversized: {len(body)} bytes > limit {max_bytes}")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Malformed(f"not JSON: {exc}") from None


def _schema_error(exc: ValidationError) -> Malformed:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    return Malformed(f"wrong schema: {where}: {first['msg']} ({exc.error_count()} errors)")


def parse_report(body: bytes, max_bytes: int) -> Report:
    return _report(_load(body, max_bytes))


@dataclass(frozen=True)
class ParsedReport:
    """One report of a message, or the reason it is not one (with its own JSON, so it can be
    dead-lettered alone when its message carried several)."""

    report: Report | None
    reason: str | None
    raw: bytes


def parse_reports(body: bytes, max_bytes: int) -> list[ParsedReport]:
    """A message holds one report (an object) or several (an array of them): workers batch
    the reports that are ready at the same moment into one message."""
    data = _load(body, max_bytes)
    if not isinstance(data, list):
        return [ParsedReport(_report(data), None, body)]
    if not data:
        raise Malformed("wrong schema: an empty array of reports")
    parsed = []
    for element in data:
        raw = orjson.dumps(element)
        try:
            parsed.append(ParsedReport(_report(element), None, raw))
        except Malformed as exc:
            parsed.append(ParsedReport(None, str(exc), raw))
    return parsed


def _versioned(data: object) -> None:
    """The models fill in a missing `v`; the wire contract requires it."""
    if isinstance(data, dict) and "v" not in data:
        raise Malformed('wrong schema: v: Field required (every message carries "v": 1)')


def _report(data: object) -> Report:
    try:
        report = REPORT_ADAPTER.validate_python(data)
    except ValidationError as exc:
        raise _schema_error(exc) from None
    _versioned(data)
    try:
        uuid.UUID(report.task_id)
    except ValueError:
        raise Malformed(f"unknown task: {report.task_id!r} is not a task id") from None
    return report


def parse_command(body: bytes, max_bytes: int) -> Command:
    data = _load(body, max_bytes)
    try:
        command = COMMAND_ADAPTER.validate_python(data)
    except ValidationError as exc:
        raise _schema_error(exc) from None
    _versioned(data)
    return command


def parse_message(body: bytes, max_bytes: int, amqp_message_id: str | None) -> MessageBody:
    """A message from the exchange <ns>.messages; its id from the body, else from the AMQP
    message_id property."""
    data = _load(body, max_bytes)
    if isinstance(data, dict) and "v" not in data:
        raise Malformed('wrong schema: v: Field required (every message carries "v": 1)')
    try:
        message = MessageBody.model_validate(data)
    except ValidationError as exc:
        raise _schema_error(exc) from None
    if message.message_id is None:
        if not amqp_message_id:
            raise Malformed(
                "wrong schema: message_id: required, in the body or as the AMQP message_id "
                "property (it is what makes the message count once)"
            )
        message = message.model_copy(update={"message_id": amqp_message_id})
    return message
