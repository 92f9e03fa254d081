"""Generate the JSON Schema of every wire message into schemas/ (checked in; a test fails
when they are stale). Run: python -m orchestrator.model.schema

The files are plain JSON Schema draft 2020-12, for any validator: a union of message types is a
`oneOf` whose members tell themselves apart by the `const` of their required `type`. Pydantic
adds OpenAPI's `discriminator` keyword to such unions, which strict validators refuse as
unknown; it is left out."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from orchestrator.model.wire import SCHEMA_MODELS

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"
DIALECT = "https://json-schema.org/draft/2020-12/schema"


class PlainJsonSchema(GenerateJsonSchema):
    """Pydantic's generator without OpenAPI's `discriminator` on tagged unions."""

    def tagged_union_schema(self, schema: core_schema.TaggedUnionSchema) -> JsonSchemaValue:
        generated = super().tagged_union_schema(schema)
        generated.pop("discriminator", None)
        return generated


def _schema(model: Any) -> dict[str, Any]:
    if isinstance(model, type) and issubclass(model, BaseModel):
        return model.model_json_schema(schema_generator=PlainJsonSchema)
    if isinstance(model, TypeAdapter):
        return model.json_schema(schema_generator=PlainJsonSchema)
    raise TypeError(f"cannot make a schema of {model!r}")


#: Where each schema's messages travel (<ns> is the namespace, `orch` by default).
WHERE = {
    "task": "A task message: engine -> worker, on queue <ns>.task.<topic>.",
    "report": "One report: worker -> engine, on exchange <ns>.reports with key `report`.",
    "report_message": "The body of a message on exchange <ns>.reports (key `report`): one "
    "report, or a non-empty array of reports.",
    "worker_notice": "An answer to a report, or an unasked notice: engine -> worker, to the "
    "report's reply_to or to the queue <ns>.worker.<worker_id>.",
    "command": "A command: application -> engine, on exchange <ns>.commands with key "
    "`command`, with reply_to and correlation_id.",
    "command_reply": "A reply: engine -> application.",
    "message": "A message: any producer -> engine, on exchange <ns>.messages (any routing key).",
}


def render() -> dict[str, bytes]:
    """File name -> content, deterministic."""
    files = {}
    for name, model in SCHEMA_MODELS.items():
        schema = {"$schema": DIALECT, **_schema(model)}
        schema["title"] = schema.get("title", name)
        what = schema.get("description")
        schema["description"] = WHERE[name] + (f" {what}" if what else "")
        options = orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS
        files[f"{name}.schema.json"] = orjson.dumps(schema, option=options) + b"\n"
    return files


def write(directory: Path = SCHEMA_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, content in render().items():
        path = directory / name
        path.write_bytes(content)
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write():
        sys.stdout.write(f"wrote {path}\n")
