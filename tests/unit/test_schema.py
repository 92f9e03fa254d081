from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from jsonschema import Draft202012Validator

from orchestrator.model.schema import render

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def test_checked_in_schemas_are_current() -> None:
    rendered = render()
    on_disk = {path.name: path.read_bytes() for path in SCHEMAS.glob("*.schema.json")}
    assert sorted(on_disk) == sorted(rendered), "run: python -m orchestrator.model.schema"
    stale = [name for name, content in rendered.items() if on_disk[name] != content]
    assert stale == [], f"stale schemas {stale}: run python -m orchestrator.model.schema"


def test_report_schema_names_every_report_type() -> None:
    report = render()["report.schema.json"].decode()
    for kind in ("claimed", "completed", "failed", "bpmn_error", "extend_lock", "released"):
        assert f'"const": "{kind}"' in report


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _checked_in() -> dict[str, dict[str, Any]]:
    return {path.name: orjson.loads(path.read_bytes()) for path in SCHEMAS.glob("*.schema.json")}


def test_schemas_are_plain_draft_2020_12() -> None:
    """Any standard validator takes them: valid against the 2020-12 meta-schema, `$schema`
    set, and no OpenAPI `discriminator` (strict validators refuse unknown keywords)."""
    for name, schema in _checked_in().items():
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema", name
        Draft202012Validator.check_schema(schema)
        keywords = {key for node in _walk(schema) for key in node}
        assert "discriminator" not in keywords, f"{name} uses OpenAPI's discriminator"
        assert "nullable" not in keywords, f"{name} uses OpenAPI's nullable"


#: Bodies any AMQP producer publishes (one kind per exchange): `v`, but no `type`.
UNTYPED = ("message.schema.json",)


def test_every_message_requires_its_envelope() -> None:
    """`v` and `type` are on every message: each message object requires both, and the
    `type` of each is a constant, which is what tells a union's members apart. (A message
    from any producer to <ns>.messages requires `v` only: that exchange carries one kind.)"""
    messages = 0
    for name, schema in _checked_in().items():
        for node in [schema, *schema.get("$defs", {}).values()]:
            properties = node.get("properties", {})
            if "v" not in properties:
                continue
            messages += 1
            if name in UNTYPED:
                assert node["required"][:1] == ["v"] and "type" not in properties, name
                continue
            assert node["required"][:2] == ["v", "type"], f"{name}: {node.get('title')}"
            assert properties["v"]["const"] == 1
            assert isinstance(properties["type"]["const"], str)
    assert messages >= 18


def test_union_members_have_distinct_types() -> None:
    for name, schema in _checked_in().items():
        definitions = schema.get("$defs", {})
        for node in _walk(schema):
            if "oneOf" not in node:
                continue
            kinds = [
                definitions[member["$ref"].rsplit("/", 1)[1]]["properties"]["type"]["const"]
                for member in node["oneOf"]
            ]
            assert len(kinds) == len(set(kinds)), f"{name}: {kinds}"
