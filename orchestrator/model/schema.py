"""Generate the JSON Schema of every wire message into schemas/ (checked in; a test fails
when they are stale). Run: python -m orchestrator.model.schema"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, TypeAdapter

from orchestrator.model.wire import SCHEMA_MODELS

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"


def _schema(model: Any) -> dict[str, Any]:
    if isinstance(model, type) and issubclass(model, BaseModel):
        return model.model_json_schema()
    if isinstance(model, TypeAdapter):
        return model.json_schema()
    raise TypeError(f"cannot make a schema of {model!r}")


def render() -> dict[str, bytes]:
    """File name -> content, deterministic."""
    files = {}
    for name, model in SCHEMA_MODELS.items():
        schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", **_schema(model)}
        schema["title"] = schema.get("title", name)
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
