"""The wire contract as an outsider reads it: every example message in docs/wire-protocol.md
validates against the checked-in JSON Schemas with a standard Draft 2020-12 validator (with
format checking), and the engine's own models read it the same way, field for field."""

from __future__ import annotations

import asyncio
import re
from functools import cache
from pathlib import Path
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator
from pydantic import BaseModel

from orchestrator.daemon.parsing import Malformed, parse_command, parse_message, parse_reports
from orchestrator.definitions.loader import load_definition
from orchestrator.model.wire import (
    NOTICE_ADAPTER,
    BpmnErrorReport,
    Claimed,
    CommandReply,
    Completed,
    DeployCommand,
    ExtendLock,
    Failed,
    Released,
    Report,
    TaskMessage,
)
from workers._sender import ReportSender

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "wire-protocol.md"
SCHEMAS = ROOT / "schemas"
FENCE = re.compile(r"^```json\n(.*?)^```$", re.MULTILINE | re.DOTALL)
#: Schemas whose members are told apart by `type`; report_message is report's array form.
KIND_SCHEMAS = ("task", "report", "worker_notice", "command", "command_reply")
MAX_BYTES = 1_048_576


@cache
def schema(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = orjson.loads((SCHEMAS / f"{name}.schema.json").read_bytes())
    return loaded


def validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(schema(name), format_checker=Draft202012Validator.FORMAT_CHECKER)


def kinds_of(name: str) -> set[str]:
    """The `type` constants a schema's message objects declare."""
    document = schema(name)
    objects = [document, *document.get("$defs", {}).values()]
    return {
        obj["properties"]["type"]["const"]
        for obj in objects
        if "const" in obj.get("properties", {}).get("type", {})
    }


def schema_for(kind: str | None) -> str:
    """The schema of a message of this `type`; a message without one is the body of a
    message on <ns>.messages (any producer: no `type`)."""
    if kind is None:
        return "message"
    names = [name for name in KIND_SCHEMAS if kind in kinds_of(name)]
    assert len(names) == 1, f"type {kind!r} is declared by {names or 'no schema'}"
    return names[0]


def examples() -> list[Any]:
    blocks = FENCE.findall(DOC.read_text(encoding="utf-8"))
    assert blocks, f"no ```json blocks in {DOC.name}"
    return [orjson.loads(block) for block in blocks]


def example_id(example: Any) -> str:
    if isinstance(example, list):
        return "array:" + "+".join(str(item.get("type")) for item in example)
    return str(example.get("type"))


EXAMPLES = examples()
EXAMPLE_IDS = [f"{index}-{example_id(example)}" for index, example in enumerate(EXAMPLES)]


def objects_in(example: Any) -> list[dict[str, Any]]:
    return example if isinstance(example, list) else [example]


@pytest.mark.parametrize("example", EXAMPLES, ids=EXAMPLE_IDS)
def test_example_validates_against_its_schema(example: Any) -> None:
    if isinstance(example, list):
        errors = list(validator("report_message").iter_errors(example))
        assert errors == [], [error.message for error in errors]
    for message in objects_in(example):
        assert isinstance(message, dict), "every example is a JSON object or an array of them"
        name = schema_for(message.get("type"))
        errors = list(validator(name).iter_errors(message))
        assert errors == [], f"{name}: {[error.message for error in errors]}"
        if name == "report":
            assert list(validator("report_message").iter_errors(message)) == []


def test_every_message_kind_has_an_example() -> None:
    shown = {message.get("type") for example in EXAMPLES for message in objects_in(example)}
    assert None in shown, "no example of a message on <ns>.messages"
    declared = set().union(*(kinds_of(name) for name in KIND_SCHEMAS))
    assert declared - shown == set(), "message types without an example in the doc"
    assert any(isinstance(example, list) for example in EXAMPLES), "no report array example"
    claims = [m for e in EXAMPLES for m in objects_in(e) if m.get("type") == "claimed"]
    assert {"request_id" in claim for claim in claims} == {True, False}


def _read_as_the_engine_does(example: Any) -> list[BaseModel]:
    """Reports and commands through the engine's own parsing; the rest through the model
    its reader uses (the worker SDK for tasks and notices, the client for replies)."""
    body = orjson.dumps(example)
    if isinstance(example, list) or schema_for(example.get("type")) == "report":
        parsed = parse_reports(body, MAX_BYTES)
        assert [one.reason for one in parsed] == [None] * len(parsed)
        return [one.report for one in parsed if one.report is not None]
    name = schema_for(example.get("type"))
    if name == "message":
        return [parse_message(body, MAX_BYTES, None)]
    if name == "command":
        return [parse_command(body, MAX_BYTES)]
    if name == "task":
        return [TaskMessage.model_validate_json(body)]
    if name == "worker_notice":
        return [NOTICE_ADAPTER.validate_json(body)]
    return [CommandReply.model_validate_json(body)]


@pytest.mark.parametrize("example", EXAMPLES, ids=EXAMPLE_IDS)
def test_example_reads_the_same_with_the_engines_models(example: Any) -> None:
    """Field for field: the schemas allow unknown fields (readers ignore them), so a misspelt
    field in the doc would pass the schema; here it would be missing from the model."""
    models = _read_as_the_engine_does(example)
    for message, model in zip(objects_in(example), models, strict=True):
        dumped = model.model_dump(mode="json")
        for key, value in message.items():
            kind = message.get("type", "message")
            assert key in dumped, f"{kind}: the model has no field {key!r}"
            assert dumped[key] == value, f"{kind}.{key}: read as {dumped[key]!r}"
        if isinstance(model, DeployCommand):
            load_definition(model.source)  # the deploy example is a real definition


@pytest.mark.parametrize("field", ["v", "type"])
@pytest.mark.parametrize("example", EXAMPLES, ids=EXAMPLE_IDS)
def test_schema_and_engine_both_refuse_a_message_without_its_envelope(
    example: Any, field: str
) -> None:
    for message in objects_in(example):
        name = schema_for(message.get("type"))
        if field not in message:
            continue  # a message on <ns>.messages has no `type`
        stripped = {key: value for key, value in message.items() if key != field}
        assert not validator(name).is_valid(stripped), f"{name} accepts a message without {field}"
        if name == "report":
            with pytest.raises(Malformed, match="wrong schema"):
                parse_reports(orjson.dumps(stripped), MAX_BYTES)
            in_array = parse_reports(orjson.dumps([stripped]), MAX_BYTES)
            assert in_array[0].report is None
            assert (in_array[0].reason or "").startswith("wrong schema")
        elif name == "command":
            with pytest.raises(Malformed, match="wrong schema"):
                parse_command(orjson.dumps(stripped), MAX_BYTES)
        elif name == "message":
            with pytest.raises(Malformed, match="wrong schema"):
                parse_message(orjson.dumps(stripped), MAX_BYTES, "an-amqp-id")


def test_the_engine_refuses_another_version() -> None:
    report = Completed(task_id="e2174e48-ab27-471a-a696-4be84aa1685e", attempt=1, worker_id="w")
    body = orjson.dumps({**report.model_dump(mode="json"), "v": 2})
    with pytest.raises(Malformed, match=r"wrong schema: completed\.v"):
        parse_reports(body, MAX_BYTES)
    assert not validator("report").is_valid(orjson.loads(body))


async def test_the_sdk_sends_every_report_with_its_envelope() -> None:
    """What the worker SDK publishes validates against report_message, `v` and `type` in."""
    bodies: list[bytes] = []

    async def publish(body: bytes, message_id: str) -> None:
        await asyncio.sleep(0)
        bodies.append(body)

    ids = {"task_id": "e2174e48-ab27-471a-a696-4be84aa1685e", "attempt": 1, "worker_id": "w"}
    reports: list[Report] = [
        Claimed(**ids),
        Claimed(**ids, request_id="r-1"),
        Completed(**ids, variables={"a": 1}),
        Failed(**ids, error_message="boom", error_code="X", retries=0, retry_delay_ms=0),
        BpmnErrorReport(**ids, code="NOPE"),
        ExtendLock(**ids, lock_ms=1000, request_id="r-2"),
        Released(**ids),
    ]
    sender = ReportSender(publish, in_flight=1)
    await asyncio.gather(*(sender.send(report) for report in reports))
    sent = [orjson.loads(body) for body in bodies]
    assert any(isinstance(message, list) for message in sent)
    flat = [one for message in sent for one in objects_in(message)]
    assert sorted(one["type"] for one in flat) == sorted(r.type for r in reports)
    for message in sent:
        assert validator("report_message").is_valid(message)
    for one in flat:
        assert one["v"] == 1
