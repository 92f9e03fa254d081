"""Turn a YAML or JSON definition into a validated, compiled process graph."""

from __future__ import annotations

import hashlib
import re
from collections import deque
from dataclasses import dataclass
from typing import Any

import orjson
import yaml
from pydantic import ValidationError

from orchestrator.definitions.expressions import Expression, ExpressionError, parse_expression
from orchestrator.errors import DefinitionError
from orchestrator.model.definition import (
    EndEvent,
    ErrorBoundaryEvent,
    ExclusiveGateway,
    Node,
    ProcessDefinition,
    SequenceFlow,
    ServiceTask,
    StartEvent,
)

MAX_SOURCE_BYTES = 1_048_576
_TOPIC = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_ELEMENT_ID = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,199}$")
_VARIABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,99}$")


@dataclass(frozen=True)
class Process:
    """A definition ready to run: nodes by id, outgoing flows, parsed conditions."""

    definition: ProcessDefinition
    nodes: dict[str, Node]
    outgoing: dict[str, tuple[SequenceFlow, ...]]
    conditions: dict[str, Expression]
    start_id: str
    topics: frozenset[str]
    #: Service task id -> the error boundary events attached to it.
    boundaries: dict[str, tuple[ErrorBoundaryEvent, ...]]

    @property
    def key(self) -> str:
        return self.definition.key

    def catching_boundary(self, task_node_id: str, code: str) -> ErrorBoundaryEvent | None:
        """The boundary event that catches `code` on that task: an exact match wins over a
        catch-all, as in BPMN."""
        attached = self.boundaries.get(task_node_id, ())
        exact = next((b for b in attached if b.error_code == code), None)
        return exact or next((b for b in attached if b.error_code is None), None)


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
        raise DefinitionError([_describe(error, data) for error in exc.errors()]) from exc
    return _compile(definition)


def content_hash(definition: ProcessDefinition) -> str:
    """Hash of the normalized graph, so formatting changes do not create a new version."""
    canonical = orjson.dumps(definition.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


def _describe(error: Any, data: dict[str, Any]) -> str:
    loc = list(error["loc"])
    where = "definition"
    if len(loc) >= 2 and loc[0] in ("nodes", "flows") and isinstance(loc[1], int):
        items = data.get(loc[0]) or []
        element = items[loc[1]] if loc[1] < len(items) else {}
        element_id = element.get("id", "?") if isinstance(element, dict) else "?"
        where = f"{loc[0][:-1]} '{element_id}' ({loc[0]}[{loc[1]}])"
        loc = [part for part in loc[2:] if part not in _NODE_TYPES]
    path = ".".join(str(part) for part in loc)
    return f"{where}: {path + ': ' if path else ''}{error['msg']}"


_NODE_TYPES = {
    "start_event",
    "end_event",
    "service_task",
    "exclusive_gateway",
    "error_boundary_event",
}


def _compile(definition: ProcessDefinition) -> Process:
    problems: list[str] = []
    nodes = _index_nodes(definition, problems)
    outgoing, incoming = _index_flows(definition, nodes, problems)
    conditions = _parse_conditions(definition, nodes, problems)
    starts = [node.id for node in nodes.values() if isinstance(node, StartEvent)]
    if len(starts) != 1:
        problems.append(f"definition: needs exactly one start_event, found {len(starts)}")
    for node in nodes.values():
        _check_node(node, outgoing.get(node.id, ()), incoming.get(node.id, 0), problems)
    boundaries = _index_boundaries(nodes, problems)
    if len(starts) == 1:
        _check_reachable(starts[0], nodes, outgoing, boundaries, problems)
    if problems:
        raise DefinitionError(problems)
    topics = frozenset(node.topic for node in nodes.values() if isinstance(node, ServiceTask))
    return Process(definition, nodes, outgoing, conditions, starts[0], topics, boundaries)


def _index_nodes(definition: ProcessDefinition, problems: list[str]) -> dict[str, Node]:
    nodes: dict[str, Node] = {}
    for node in definition.nodes:
        if not _ELEMENT_ID.match(node.id):
            problems.append(f"node '{node.id}': invalid id")
        if node.id in nodes:
            problems.append(f"node '{node.id}': duplicate id")
        if isinstance(node, ServiceTask) and not _TOPIC.match(node.topic):
            problems.append(f"node '{node.id}': invalid topic {node.topic!r} (use [A-Za-z0-9._-])")
        nodes[node.id] = node
    return nodes


def _index_flows(
    definition: ProcessDefinition, nodes: dict[str, Node], problems: list[str]
) -> tuple[dict[str, tuple[SequenceFlow, ...]], dict[str, int]]:
    outgoing: dict[str, list[SequenceFlow]] = {}
    incoming: dict[str, int] = {}
    seen: set[str] = set(nodes)
    for flow in definition.flows:
        if flow.id in seen:
            problems.append(f"flow '{flow.id}': duplicate id")
        seen.add(flow.id)
        for end, node_id in (("from", flow.source), ("to", flow.target)):
            if node_id not in nodes:
                problems.append(f"flow '{flow.id}': '{end}' names unknown node '{node_id}'")
        outgoing.setdefault(flow.source, []).append(flow)
        incoming[flow.target] = incoming.get(flow.target, 0) + 1
    return {key: tuple(flows) for key, flows in outgoing.items()}, incoming


def _parse_conditions(
    definition: ProcessDefinition, nodes: dict[str, Node], problems: list[str]
) -> dict[str, Expression]:
    conditions: dict[str, Expression] = {}
    for flow in definition.flows:
        if flow.condition is None:
            continue
        if not isinstance(nodes.get(flow.source), ExclusiveGateway):
            problems.append(
                f"flow '{flow.id}': only flows out of an exclusive_gateway have conditions"
            )
        try:
            conditions[flow.id] = parse_expression(flow.condition)
        except ExpressionError as exc:
            problems.append(f"flow '{flow.id}': condition: {exc}")
    return conditions


def _check_node(
    node: Node, outgoing: tuple[SequenceFlow, ...], incoming: int, problems: list[str]
) -> None:
    where = f"node '{node.id}'"
    if isinstance(node, StartEvent):
        if incoming:
            problems.append(f"{where}: a start_event cannot have incoming flows")
        if len(outgoing) != 1:
            problems.append(f"{where}: a start_event needs exactly one outgoing flow")
    elif isinstance(node, EndEvent):
        if outgoing:
            problems.append(f"{where}: an end_event cannot have outgoing flows")
    elif isinstance(node, ServiceTask):
        if len(outgoing) != 1:
            problems.append(f"{where}: a service_task needs exactly one outgoing flow")
    elif isinstance(node, ErrorBoundaryEvent):
        if incoming:
            problems.append(f"{where}: an error_boundary_event cannot have incoming flows")
        if len(outgoing) != 1:
            problems.append(f"{where}: an error_boundary_event needs exactly one outgoing flow")
        return
    else:
        _check_gateway(node, outgoing, problems)
    if not isinstance(node, StartEvent) and incoming == 0:
        problems.append(f"{where}: has no incoming flow")


def _index_boundaries(
    nodes: dict[str, Node], problems: list[str]
) -> dict[str, tuple[ErrorBoundaryEvent, ...]]:
    attached: dict[str, list[ErrorBoundaryEvent]] = {}
    for node in nodes.values():
        if not isinstance(node, ErrorBoundaryEvent):
            continue
        where = f"node '{node.id}'"
        if not isinstance(nodes.get(node.attached_to), ServiceTask):
            problems.append(f"{where}: attached_to '{node.attached_to}' is not a service_task")
            continue
        for name in (node.code_variable, node.message_variable):
            if name is not None and not _VARIABLE.match(name):
                problems.append(f"{where}: invalid variable name {name!r}")
        siblings = attached.setdefault(node.attached_to, [])
        if any(other.error_code == node.error_code for other in siblings):
            catches = f"error code {node.error_code!r}" if node.error_code else "every error code"
            problems.append(
                f"{where}: another error_boundary_event on '{node.attached_to}' already "
                f"catches {catches}"
            )
        siblings.append(node)
    return {task_id: tuple(events) for task_id, events in attached.items()}


def _check_gateway(
    node: ExclusiveGateway, outgoing: tuple[SequenceFlow, ...], problems: list[str]
) -> None:
    where = f"node '{node.id}'"
    if not outgoing:
        problems.append(f"{where}: an exclusive_gateway needs at least one outgoing flow")
    ids = {flow.id for flow in outgoing}
    if node.default is not None and node.default not in ids:
        problems.append(f"{where}: default flow '{node.default}' is not one of its outgoing flows")
    for flow in outgoing:
        if flow.condition is None and flow.id != node.default and len(outgoing) > 1:
            problems.append(f"{where}: flow '{flow.id}' needs a condition or must be the default")


def _check_reachable(
    start: str,
    nodes: dict[str, Node],
    outgoing: dict[str, tuple[SequenceFlow, ...]],
    boundaries: dict[str, tuple[ErrorBoundaryEvent, ...]],
    problems: list[str],
) -> None:
    reached = {start}
    pending = deque([start])
    while pending:
        node_id = pending.popleft()
        # A task's boundary events are reached with the task; flows reach everything else.
        targets = [flow.target for flow in outgoing.get(node_id, ())]
        targets += [event.id for event in boundaries.get(node_id, ())]
        for target in targets:
            if target in nodes and target not in reached:
                reached.add(target)
                pending.append(target)
    for node_id in nodes:
        if node_id not in reached:
            problems.append(f"node '{node_id}': not reachable from the start event")
    if not any(isinstance(nodes[node_id], EndEvent) for node_id in reached):
        problems.append("definition: no end_event is reachable from the start event")
