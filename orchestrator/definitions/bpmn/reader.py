"""The entry points: BPMN XML to the model's dicts (read_bpmn), and on to compiled processes
(load_bpmn)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from xml.etree.ElementTree import Element

from pydantic import ValidationError

from orchestrator.definitions.bpmn.camunda7 import Camunda7
from orchestrator.definitions.bpmn.dialect import Dialect
from orchestrator.definitions.bpmn.names import (
    BPMN,
    CAMUNDA,
    MODELER,
    ZEEBE,
    is_bpmn,
    pretty,
    split,
)
from orchestrator.definitions.bpmn.names import qname as q
from orchestrator.definitions.bpmn.problems import ElementPlace, Problems, describe
from orchestrator.definitions.bpmn.safe_xml import read_xml
from orchestrator.definitions.bpmn.walker import ProcessWalker
from orchestrator.definitions.bpmn.zeebe import Zeebe
from orchestrator.definitions.loader import Process, compile_definition
from orchestrator.errors import DefinitionError
from orchestrator.model.definition import ProcessDefinition


@dataclass(frozen=True)
class BpmnProcess:
    """One executable process of a BPMN file."""

    key: str
    #: What ProcessDefinition.model_validate accepts.
    data: dict[str, Any]
    #: Element id -> where it is in the source, to say where a problem is.
    elements: dict[str, ElementPlace]


def read_bpmn(source: bytes | str) -> list[BpmnProcess]:
    """Every executable process in the file; a DefinitionError naming every problem (with
    its line) when anything cannot be mapped."""
    document = read_xml(source)
    root = document.root
    if not is_bpmn(root, "definitions"):
        raise DefinitionError(
            [f"not a BPMN 2.0 file: the root element is <{pretty(root.tag)}>, not definitions"]
        )
    problems = Problems(document)
    dialect = _dialect(root, problems)
    errors = {error.get("id", ""): error for error in root.findall(q(BPMN, "error"))}
    messages = {message.get("id", ""): message for message in root.findall(q(BPMN, "message"))}
    walked: list[tuple[Element, ProcessWalker, dict[str, Any]]] = []
    for process in root.findall(q(BPMN, "process")):
        if process.get("isExecutable", "true").strip() == "false":
            continue
        walker = ProcessWalker(problems, dialect, errors, messages)
        walked.append((process, walker, walker.walk_process(process)))
    if not walked:
        problems.add_general('no executable process: set isExecutable="true" on a process')
    problems.raise_if_any()
    for process, walker, data in walked:
        _validate(process, walker, data, problems)
    problems.raise_if_any()
    return [BpmnProcess(data["key"], data, walker.places) for _, walker, data in walked]


def load_bpmn(source: bytes | str) -> list[Process]:
    """read_bpmn, then compile each process; graph problems are said with their lines."""
    compiled: list[Process] = []
    lines: list[str] = []
    located: list[tuple[str | None, str]] = []
    for process in read_bpmn(source):
        try:
            compiled.append(compile_definition(process.data))
        except DefinitionError as exc:
            for element_id, why in exc.located:
                place = process.elements.get(element_id or "")
                lines.append(describe(place, element_id, why) if place else why)
                located.append((element_id, why))
    if lines:
        raise DefinitionError(lines, located)
    return compiled


def _dialect(root: Element, problems: Problems) -> Dialect:
    """Camunda 8 when the file uses zeebe: extensions (or says it is for Camunda Cloud),
    else Camunda 7. A file may not mix both.

    The root's own attributes are the modeler's bookkeeping (Web Modeler writes
    camunda:diagramRelationId on Camunda 8 files too), so they decide nothing."""
    first: dict[str, str] = {}
    for element in root.iter():
        names = [element.tag] if element is root else [element.tag, *element.attrib]
        for name in names:
            namespace = split(name)[0]
            if namespace in (CAMUNDA, ZEEBE) and namespace not in first:
                line = problems.document.line(element)
                first[namespace] = f"{pretty(name)} on line {line}"
    if CAMUNDA in first and ZEEBE in first:
        problems.add(
            root,
            f"mixes Camunda 7 (camunda:) and Camunda 8 (zeebe:) extensions: {first[CAMUNDA]}, "
            f"{first[ZEEBE]}; a file is for one of them",
        )
    cloud = root.get(q(MODELER, "executionPlatform")) == "Camunda Cloud"
    return Zeebe() if ZEEBE in first or cloud else Camunda7()


def _validate(
    process: Element, walker: ProcessWalker, data: dict[str, Any], problems: Problems
) -> None:
    """Check the dicts against the model, each problem said at its element."""
    try:
        ProcessDefinition.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors():
            element, path = _where(process, walker, data, list(error["loc"]))
            problems.add(element, f"{path + ': ' if path else ''}{error['msg']}")


def _where(
    process: Element, walker: ProcessWalker, data: dict[str, Any], loc: list[Any]
) -> tuple[Element, str]:
    element = process
    if len(loc) >= 2 and loc[0] in ("nodes", "flows") and isinstance(loc[1], int):
        item = data[loc[0]][loc[1]]
        element = walker.elements.get(item.get("id", ""), process)
        loc = [part for part in loc[2:] if part != item.get("type")]
    return element, ".".join(str(part) for part in loc)
