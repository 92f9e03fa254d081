"""Turn a YAML or JSON definition into a validated, compiled process graph."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
import yaml
from pydantic import ValidationError

from orchestrator.definitions.graph import Process, compile_process

__all__ = ["Process", "compile_definition", "content_hash", "load_definition", "parse_source"]
from orchestrator.errors import DefinitionError
from orchestrator.model.definition import ProcessDefinition

MAX_SOURCE_BYTES = 1_048_576


def parse_source(source: str | bytes) -> dict[str, Any]:
    """Read YAML (a superset of JSON) into a mapping, with a clear error for anything else."""
    if len(source) > MAX_SOURCE_BYTES:
        raise DefinitionError([f"definition is larger than {MAX_SOURCE_BYTES} bytes"])
    try:
        data = yaml.safe_load(source)
    except yaml.YAMLError as exc:
        raise DefinitionError([f"not valid YAML/JSON: {exc}"]) from exc
    if not isinstance(data, dict):
        raise DefinitionError(["a definition must be a mapping with 'key', 'nodes' and 'flows'"])
    return data


def load_definition(source: str | bytes) -> Process:
    return compile_definition(parse_source(source))


def compile_definition(data: dict[str, Any]) -> Process:
    try:
        definition = ProcessDefinition.model_validate(data)
    except ValidationError as exc:
        located = [_locate(error, data) for error in exc.errors()]
        raise DefinitionError([text for _, text in located], located) from exc
    process, problems = compile_process(definition)
    if process is None:
        raise DefinitionError(problems.texts(), problems.located)
    return process


def content_hash(definition: ProcessDefinition) -> str:
    """Hash of the normalized graph, so formatting changes do not create a new version."""
    canonical = orjson.dumps(definition.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


def _locate(error: Any, data: dict[str, Any]) -> tuple[str | None, str]:
    """A validation error as (element id, text naming the element and the field)."""
    loc = list(error["loc"])
    where, element_id = "definition", None
    if len(loc) >= 2 and loc[0] in ("nodes", "flows") and isinstance(loc[1], int):
        items = data.get(loc[0]) or []
        element = items[loc[1]] if loc[1] < len(items) else {}
        found = element.get("id") if isinstance(element, dict) else None
        element_id = found if isinstance(found, str) else None
        where = f"{loc[0][:-1]} '{element_id or '?'}' ({loc[0]}[{loc[1]}])"
        loc = [part for part in loc[2:] if not _is_type_tag(part)]
    path = ".".join(str(part) for part in loc)
    return element_id, f"{where}: {path + ': ' if path else ''}{error['msg']}"


def _is_type_tag(part: object) -> bool:
    """Pydantic puts the discriminator's value (a node type) into an error's location."""
    return isinstance(part, str) and part in _NODE_TYPES


_NODE_TYPES = frozenset(
    {
        "start_event",
        "end_event",
        "error_end_event",
        "terminate_end_event",
        "service_task",
        "user_task",
        "manual_task",
        "exclusive_gateway",
        "parallel_gateway",
        "inclusive_gateway",
        "subprocess",
        "call_activity",
        "error_boundary_event",
        "timer_catch_event",
        "message_catch_event",
        "receive_task",
        "timer_boundary_event",
        "message_boundary_event",
        "event_based_gateway",
    }
)
