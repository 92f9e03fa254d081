"""Helpers the BPMN reader's tests share: the Modeler-style files in tests/data/bpmn, and
small files written inline (`bpmn_file`), whose line numbers the tests rely on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from orchestrator.definitions.bpmn import BpmnProcess, read_bpmn
from orchestrator.errors import DefinitionError
from orchestrator.model.definition import ProcessDefinition

DATA = Path(__file__).resolve().parent.parent / "data" / "bpmn"

_NAMESPACES = (
    'xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL" '
    'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
    'xmlns:camunda="http://camunda.org/schema/1.0/bpmn" '
    'xmlns:zeebe="http://camunda.org/schema/zeebe/1.0" '
    'xmlns:modeler="http://camunda.org/schema/modeler/1.0" '
    'xmlns:orch="https://orchestrator.dev/schema/bpmn/1.0" '
)
_PLATFORM = {
    7: 'modeler:executionPlatform="Camunda Platform"',
    8: 'modeler:executionPlatform="Camunda Cloud"',
}


def source(name: str) -> bytes:
    """A file of tests/data/bpmn."""
    return (DATA / name).read_bytes()


def only(name: str) -> BpmnProcess:
    """The one process of a file of tests/data/bpmn."""
    processes = read_bpmn(source(name))
    assert len(processes) == 1
    return processes[0]


def nodes(process: BpmnProcess) -> dict[str, Any]:
    definition = ProcessDefinition.model_validate(process.data)
    return {node.id: node for node in definition.nodes}


def refused(text: str | bytes) -> list[str]:
    """What the reader says is wrong with `text` (it must refuse it)."""
    with pytest.raises(DefinitionError) as error:
        read_bpmn(text)
    return error.value.problems


def bpmn_file(body: str, definitions: str = "", camunda: int = 7) -> str:
    """A small Modeler file of Camunda `camunda` (7 or 8): `body` inside one process
    (starting on line 4), then `definitions` (messages, errors) at the level of definitions."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<bpmn:definitions {_NAMESPACES}{_PLATFORM[camunda]} id="D" '
        'targetNamespace="http://bpmn.io/schema/bpmn">\n'
        '<bpmn:process id="p" isExecutable="true">\n'
        f"{body}\n</bpmn:process>\n{definitions}\n</bpmn:definitions>\n"
    )
