"""A definition compiled for running: nodes by id, flows by end, every expression parsed.

The checks here are the graph's own (flows that join up, one start per scope, gateways with
conditions, boundary events on activities); each problem names its element, so a front end
(YAML or BPMN) can say where that element is in its own source.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from orchestrator.definitions.expressions import Expression, ExpressionError, parse_expression
from orchestrator.definitions.timers import TimerError, is_expression, parse_timer
from orchestrator.model.definition import (
    CallActivity,
    EndEvent,
    ErrorBoundaryEvent,
    ErrorEndEvent,
    EventBasedGateway,
    ExclusiveGateway,
    InclusiveGateway,
    MessageBoundaryEvent,
    MessageCatchEvent,
    Node,
    ParallelGateway,
    ProcessDefinition,
    ReceiveTask,
    SequenceFlow,
    ServiceTask,
    StartEvent,
    SubProcess,
    TerminateEndEvent,
    TimerBoundaryEvent,
    TimerCatchEvent,
    UserTask,
)

TOPIC = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
ELEMENT_ID = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,199}$")
VARIABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,99}$")

#: Nodes a boundary event may be attached to.
CATCHING = (ServiceTask, UserTask, SubProcess, CallActivity, ReceiveTask)
AnyBoundary = ErrorBoundaryEvent | TimerBoundaryEvent | MessageBoundaryEvent
EventBoundary = TimerBoundaryEvent | MessageBoundaryEvent
_ENDS = (EndEvent, ErrorEndEvent, TerminateEndEvent)
_GATEWAYS = (ExclusiveGateway, ParallelGateway, InclusiveGateway)


@dataclass(frozen=True)
class Process:
    """A definition ready to run."""

    definition: ProcessDefinition
    nodes: dict[str, Node]
    outgoing: dict[str, tuple[SequenceFlow, ...]]
    incoming: dict[str, tuple[SequenceFlow, ...]]
    #: Flow id -> its parsed condition.
    conditions: dict[str, Expression]
    #: The start event of the process (key None) and of each embedded subprocess.
    starts: dict[str | None, str]
    topics: frozenset[str]
    #: Activity id -> the error boundary events attached to it.
    boundaries: dict[str, tuple[ErrorBoundaryEvent, ...]]
    #: Every other expression (mappings, multi-instance), parsed, by its source text.
    expressions: dict[str, Expression] = field(default_factory=dict)
    #: Inclusive join id -> the nodes of its scope from which a token can still reach it.
    reaches: dict[str, frozenset[str]] = field(default_factory=dict)
    #: Activity id -> its timer and message boundary events.
    event_boundaries: dict[str, tuple[EventBoundary, ...]] = field(default_factory=dict)
    #: The event subprocesses of the process (key None) and of each embedded subprocess.
    event_subprocesses: dict[str | None, tuple[SubProcess, ...]] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.definition.key

    @property
    def start_id(self) -> str:
        return self.starts[None]

    def is_join(self, node_id: str) -> bool:
        return len(self.incoming.get(node_id, ())) > 1

    def expression(self, source: str) -> Expression:
        return self.expressions[source]

    def catching_boundary(self, activity_id: str, code: str) -> ErrorBoundaryEvent | None:
        """The boundary event that catches `code` on that activity: an exact match wins over
        a catch-all, as in BPMN."""
        attached = self.boundaries.get(activity_id, ())
        exact = next((b for b in attached if b.error_code == code), None)
        return exact or next((b for b in attached if b.error_code is None), None)


class _Problems:
    """Problems found so far, each with the element it is about."""

    def __init__(self) -> None:
        self.located: list[tuple[str | None, str]] = []
        self._texts: list[str] = []

    def add(self, element_id: str | None, why: str) -> None:
        self.located.append((element_id, why))
        self._texts.append(f"node '{element_id}': {why}" if element_id else f"definition: {why}")

    def flow(self, flow_id: str, why: str) -> None:
        self.located.append((flow_id, why))
        self._texts.append(f"flow '{flow_id}': {why}")

    def texts(self) -> list[str]:
        return list(self._texts)


def compile_process(definition: ProcessDefinition) -> tuple[Process | None, _Problems]:
    problems = _Problems()
    nodes = _index_nodes(definition.nodes, problems)
    outgoing, incoming = _index_flows(definition.flows, nodes, problems)
    starts = _index_starts(nodes, problems)
    for node in nodes.values():
        _check_node(node, nodes, outgoing, incoming, problems)
    _check_starts(nodes, problems)
    every_boundary = _index_boundaries(nodes, problems)
    boundaries = _only(every_boundary, ErrorBoundaryEvent)
    event_boundaries = _only(every_boundary, TimerBoundaryEvent | MessageBoundaryEvent)
    conditions = _parse_conditions(definition.flows, nodes, problems)
    expressions = _parse_expressions(nodes.values(), problems)
    for scope, start in starts.items():
        entries = [n.id for n in nodes.values() if isinstance(n, StartEvent) and n.parent == scope]
        _check_reachable(scope, entries or [start], nodes, outgoing, every_boundary, problems)
    if problems.located:
        return None, problems
    topics = frozenset(n.topic for n in nodes.values() if isinstance(n, ServiceTask | UserTask))
    reaches = {
        node.id: _reaching(node.id, incoming, every_boundary)
        for node in nodes.values()
        if isinstance(node, InclusiveGateway) and len(incoming.get(node.id, ())) > 1
    }
    process = Process(
        definition,
        nodes,
        outgoing,
        incoming,
        conditions,
        starts,
        topics,
        boundaries,
        expressions,
        reaches,
        event_boundaries,
        _event_subprocesses(nodes),
    )
    return process, problems


def _only(every: dict[str, tuple[AnyBoundary, ...]], kind: Any) -> dict[str, tuple[Any, ...]]:
    found = {
        host: tuple(e for e in events if isinstance(e, kind)) for host, events in every.items()
    }
    return {host: events for host, events in found.items() if events}


def _index_nodes(all_nodes: Iterable[Node], problems: _Problems) -> dict[str, Node]:
    nodes: dict[str, Node] = {}
    for node in all_nodes:
        if not ELEMENT_ID.match(node.id):
            problems.add(node.id, "invalid id")
        if node.id in nodes:
            problems.add(node.id, "duplicate id")
        if isinstance(node, ServiceTask | UserTask) and not TOPIC.match(node.topic):
            problems.add(node.id, f"invalid topic {node.topic!r} (use [A-Za-z0-9._-])")
        for name in _variable_names(node):
            if not VARIABLE.match(name):
                problems.add(node.id, _invalid_variable(name))
        nodes[node.id] = node
    for node in nodes.values():
        if node.parent is not None and not isinstance(nodes.get(node.parent), SubProcess):
            problems.add(node.id, f"parent '{node.parent}' is not a subprocess")
    return nodes


def _invalid_variable(name: str) -> str:
    if "." in name and all(VARIABLE.match(part) for part in name.split(".")):
        return (
            f"invalid variable name {name!r}: mapping into a field of a variable is not "
            f"supported; map a whole context to {name.split('.')[0]!r} instead"
        )
    return f"invalid variable name {name!r} (use letters, digits and _, not first a digit)"


def _variable_names(node: Node) -> list[str]:
    names: list[str | None] = [m.target for m in getattr(node, "inputs", ())]
    names += [m.target for m in getattr(node, "outputs", ())]
    if isinstance(node, ErrorBoundaryEvent):
        names += [node.code_variable, node.message_variable]
    loop = getattr(node, "multi_instance", None)
    if loop is not None:
        names += [loop.element_variable, loop.output_collection]
    return [name for name in names if name is not None]


def _index_flows(
    flows: Iterable[SequenceFlow], nodes: dict[str, Node], problems: _Problems
) -> tuple[dict[str, tuple[SequenceFlow, ...]], dict[str, tuple[SequenceFlow, ...]]]:
    outgoing: dict[str, list[SequenceFlow]] = {}
    incoming: dict[str, list[SequenceFlow]] = {}
    seen: set[str] = set(nodes)
    for flow in flows:
        if flow.id in seen:
            problems.flow(flow.id, "duplicate id")
        seen.add(flow.id)
        ends = [
            (end, nodes.get(node_id), node_id)
            for end, node_id in (("from", flow.source), ("to", flow.target))
        ]
        for end, node, node_id in ends:
            if node is None:
                problems.flow(flow.id, f"'{end}' names unknown node '{node_id}'")
        source, target = ends[0][1], ends[1][1]
        if source is not None and target is not None and source.parent != target.parent:
            problems.flow(flow.id, "a sequence flow cannot cross a subprocess boundary")
        outgoing.setdefault(flow.source, []).append(flow)
        incoming.setdefault(flow.target, []).append(flow)
    return (
        {key: tuple(value) for key, value in outgoing.items()},
        {key: tuple(value) for key, value in incoming.items()},
    )


def _index_starts(nodes: dict[str, Node], problems: _Problems) -> dict[str | None, str]:
    """The start event of each scope. The process may have timer and message start events
    besides (or instead of) its none start event: a start by a client takes the none one."""
    found: dict[str | None, list[str]] = {None: []}
    for node in nodes.values():
        if isinstance(node, SubProcess):
            found.setdefault(node.id, [])
    for node in nodes.values():
        if isinstance(node, StartEvent):
            found.setdefault(node.parent, []).append(node.id)
    starts: dict[str | None, str] = {}
    for scope, ids in found.items():
        if scope is None and ids:
            plain = [i for i in ids if not _triggered(nodes[i])]
            if len(plain) > 1:
                problems.add(None, f"the process has {len(plain)} none start events")
            starts[None] = (plain or ids)[0]
        elif len(ids) == 1:
            starts[scope] = ids[0]
        else:
            what = "the process" if scope is None else "the subprocess"
            problems.add(scope, f"{what} needs exactly one start event, found {len(ids)}")
    return starts


def _triggered(node: Node) -> bool:
    return isinstance(node, StartEvent) and node.triggered


def _check_node(
    node: Node,
    nodes: dict[str, Node],
    outgoing_of: dict[str, tuple[SequenceFlow, ...]],
    incoming_of: dict[str, tuple[SequenceFlow, ...]],
    problems: _Problems,
) -> None:
    outgoing, incoming = outgoing_of.get(node.id, ()), incoming_of.get(node.id, ())
    if _is_event_sub(node) or isinstance(node, StartEvent | AnyBoundary):
        _check_flowless_entry(node, outgoing, incoming, problems)
        return
    if not incoming:
        problems.add(node.id, "has no incoming flow")
    if isinstance(node, _ENDS):
        if outgoing:
            problems.add(node.id, f"{_a(node.type)} cannot have outgoing flows")
    elif isinstance(node, EventBasedGateway):
        _check_event_gateway(node, nodes, outgoing, incoming_of, problems)
    elif isinstance(node, _GATEWAYS):
        _check_gateway(node, outgoing, problems)
    else:
        if not outgoing:
            problems.add(node.id, f"{_a(node.type)} needs an outgoing flow")
        for flow in outgoing:
            if flow.condition is not None:
                problems.flow(flow.id, "conditional flows out of an activity are not supported")
    _check_kind(node, outgoing, problems)


def _check_flowless_entry(
    node: Node,
    outgoing: tuple[SequenceFlow, ...],
    incoming: tuple[SequenceFlow, ...],
    problems: _Problems,
) -> None:
    """Where a token appears without a flow: a start or boundary event, an event subprocess."""
    if _is_event_sub(node):
        if outgoing or incoming:
            problems.add(node.id, "an event subprocess has no incoming or outgoing flows")
        return
    if incoming:
        problems.add(node.id, f"{_a(node.type)} cannot have incoming flows")
    if len(outgoing) != 1:
        problems.add(node.id, f"{_a(node.type)} needs exactly one outgoing flow")


def _check_kind(node: Node, outgoing: tuple[SequenceFlow, ...], problems: _Problems) -> None:
    if isinstance(node, CallActivity | ServiceTask | UserTask | SubProcess | ReceiveTask):
        _check_multi_instance(node, problems)
    if isinstance(node, TimerCatchEvent | MessageCatchEvent) and len(outgoing) != 1:
        problems.add(node.id, f"{_a(node.type)} needs exactly one outgoing flow")


def _check_event_gateway(
    node: EventBasedGateway,
    nodes: dict[str, Node],
    outgoing: tuple[SequenceFlow, ...],
    incoming_of: dict[str, tuple[SequenceFlow, ...]],
    problems: _Problems,
) -> None:
    if len(outgoing) < 2:
        problems.add(node.id, "an event-based gateway needs at least two outgoing flows")
    for flow in outgoing:
        target = nodes.get(flow.target)
        if flow.condition is not None:
            problems.flow(flow.id, "flows out of an event-based gateway have no conditions")
        if target is not None and not isinstance(
            target, TimerCatchEvent | MessageCatchEvent | ReceiveTask
        ):
            problems.flow(
                flow.id,
                "an event-based gateway leads only to timer or message catch events and "
                "receive tasks",
            )
        elif target is not None and len(incoming_of.get(target.id, ())) != 1:
            problems.add(target.id, "after an event-based gateway, an event has one incoming flow")


def _a(kind: str) -> str:
    return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}"


def _check_gateway(
    node: ExclusiveGateway | ParallelGateway | InclusiveGateway,
    outgoing: tuple[SequenceFlow, ...],
    problems: _Problems,
) -> None:
    if not outgoing:
        problems.add(node.id, f"{_a(node.type)} needs at least one outgoing flow")
    if isinstance(node, ParallelGateway):
        for flow in outgoing:
            if flow.condition is not None:
                problems.flow(flow.id, "flows out of a parallel gateway have no conditions")
        return
    ids = {flow.id for flow in outgoing}
    if node.default is not None and node.default not in ids:
        problems.add(node.id, f"default flow '{node.default}' is not one of its outgoing flows")
    for flow in outgoing:
        if flow.condition is None and flow.id != node.default and len(outgoing) > 1:
            problems.flow(flow.id, "needs a condition or must be the gateway's default flow")


def _check_multi_instance(
    node: CallActivity | ServiceTask | UserTask | SubProcess | ReceiveTask, problems: _Problems
) -> None:
    loop = node.multi_instance
    if loop is None:
        return
    if (loop.collection is None) == (loop.cardinality is None):
        problems.add(node.id, "multi-instance needs either a collection or a cardinality")
    if loop.output_collection is not None and loop.output_element is None:
        problems.add(node.id, "multi-instance output collection needs an output element")


def _index_boundaries(
    nodes: dict[str, Node], problems: _Problems
) -> dict[str, tuple[AnyBoundary, ...]]:
    attached: dict[str, list[AnyBoundary]] = {}
    for node in nodes.values():
        if not isinstance(node, AnyBoundary):
            continue
        host = nodes.get(node.attached_to)
        if not isinstance(host, CATCHING):
            problems.add(
                node.id,
                f"attached to '{node.attached_to}', which is not a task, subprocess, "
                "call activity or receive task",
            )
            continue
        if host.parent != node.parent:
            problems.add(node.id, "must sit in the same scope as the activity it is attached to")
        siblings = attached.setdefault(node.attached_to, [])
        if not isinstance(node, ErrorBoundaryEvent):
            siblings.append(node)
            continue
        errors = [other for other in siblings if isinstance(other, ErrorBoundaryEvent)]
        if any(other.error_code == node.error_code for other in errors):
            catches = f"error code {node.error_code!r}" if node.error_code else "every error code"
            problems.add(
                node.id,
                f"another error boundary event on '{node.attached_to}' already catches {catches}",
            )
        siblings.append(node)
    return {task_id: tuple(events) for task_id, events in attached.items()}


def _parse_conditions(
    flows: Iterable[SequenceFlow], nodes: dict[str, Node], problems: _Problems
) -> dict[str, Expression]:
    conditions: dict[str, Expression] = {}
    for flow in flows:
        if flow.condition is None:
            continue
        if not isinstance(nodes.get(flow.source), ExclusiveGateway | InclusiveGateway):
            continue  # refused by _check_node / _check_gateway, with the node's kind
        try:
            conditions[flow.id] = parse_expression(flow.condition)
        except ExpressionError as exc:
            problems.flow(flow.id, f"condition: {exc}")
    return conditions


def expression_sources(node: Node) -> list[tuple[str, str]]:
    """(what, source) of every expression a node carries besides flow conditions."""
    found: list[tuple[str, str]] = []
    for mapping in getattr(node, "inputs", ()):
        found.append((f"input '{mapping.target}'", mapping.source))
    for mapping in getattr(node, "outputs", ()):
        found.append((f"output '{mapping.target}'", mapping.source))
    timer = getattr(node, "timer", None)
    if timer is not None and is_expression(timer.value):
        found.append(("timer", timer.value))
    message = getattr(node, "message", None)
    if message is not None and message.correlation_key is not None:
        found.append(("correlation key", message.correlation_key))
    loop = getattr(node, "multi_instance", None)
    if loop is not None:
        for what in ("collection", "cardinality", "output_element", "completion_condition"):
            source = getattr(loop, what)
            if source is not None:
                found.append((f"multi-instance {what.replace('_', ' ')}", source))
    return found


def _parse_expressions(nodes: Iterable[Node], problems: _Problems) -> dict[str, Expression]:
    parsed: dict[str, Expression] = {}
    for node in nodes:
        timer = getattr(node, "timer", None)
        if timer is not None and not is_expression(timer.value):
            try:  # a literal timer is checked now; an expression's value when it starts
                parse_timer(timer.kind, timer.value)
            except TimerError as exc:
                problems.add(node.id, f"timer {timer.kind} {timer.value!r}: {exc}")
        for what, source in expression_sources(node):
            if source in parsed:
                continue
            try:
                parsed[source] = parse_expression(source)
            except ExpressionError as exc:
                problems.add(node.id, f"{what}: {exc}")
    return parsed


def _check_reachable(
    scope: str | None,
    entries: list[str],
    nodes: dict[str, Node],
    outgoing: dict[str, tuple[SequenceFlow, ...]],
    boundaries: dict[str, tuple[AnyBoundary, ...]],
    problems: _Problems,
) -> None:
    reached = set(entries)
    pending = deque(entries)
    while pending:
        node_id = pending.popleft()
        # An activity's boundary events are reached with it; flows reach everything else.
        targets = [flow.target for flow in outgoing.get(node_id, ())]
        targets += [event.id for event in boundaries.get(node_id, ())]
        for target in targets:
            if target in nodes and target not in reached:
                reached.add(target)
                pending.append(target)
    members = [
        node_id
        for node_id, node in nodes.items()
        if node.parent == scope and not _is_event_sub(node)
    ]
    for node_id in members:
        if node_id not in reached:
            problems.add(node_id, "not reachable from the start event")
    if not any(isinstance(nodes[node_id], _ENDS) for node_id in reached):
        problems.add(scope, "no end event is reachable from the start event")


def _is_event_sub(node: Node) -> bool:
    return isinstance(node, SubProcess) and node.triggered_by_event


def _check_starts(nodes: dict[str, Node], problems: _Problems) -> None:
    """A start event with a trigger starts an event subprocess, or (a timer or a message)
    the process; an embedded subprocess starts with a none start event."""
    for node in nodes.values():
        if not isinstance(node, StartEvent):
            continue
        parent = nodes.get(node.parent) if node.parent is not None else None
        in_event_sub = parent is not None and _is_event_sub(parent)
        if in_event_sub and not node.triggered:
            problems.add(node.id, "an event subprocess starts with a timer, message or error")
        elif parent is not None and not in_event_sub and node.triggered:
            problems.add(node.id, "an embedded subprocess starts with a none start event")
        elif parent is None and node.error:
            problems.add(node.id, "error start events belong in event subprocesses")
        if sum((node.error, node.timer is not None, node.message is not None)) > 1:
            problems.add(node.id, "a start event has one trigger")


def process_starts(process: Process) -> list[StartEvent]:
    """The process's timer and message start events (not its event subprocesses')."""
    return [
        node
        for node in process.nodes.values()
        if isinstance(node, StartEvent) and node.parent is None and node.triggered
    ]


def _event_subprocesses(nodes: dict[str, Node]) -> dict[str | None, tuple[SubProcess, ...]]:
    """Event subprocesses by the subprocess they sit in (None: the process)."""
    found: dict[str | None, list[SubProcess]] = {}
    for node in nodes.values():
        if isinstance(node, SubProcess) and node.triggered_by_event:
            found.setdefault(node.parent, []).append(node)
    return {parent: tuple(subs) for parent, subs in found.items()}


def _reaching(
    join_id: str,
    incoming: dict[str, tuple[SequenceFlow, ...]],
    boundaries: dict[str, tuple[AnyBoundary, ...]],
) -> frozenset[str]:
    """Every node with a path to `join_id` (flows stay inside one scope); an activity whose
    boundary event has one counts too."""
    hosts: dict[str, list[str]] = {}
    for host, events in boundaries.items():
        for event in events:
            hosts.setdefault(event.id, []).append(host)
    found: set[str] = set()
    pending = deque([join_id])
    while pending:
        node_id = pending.popleft()
        sources = [flow.source for flow in incoming.get(node_id, ())] + hosts.get(node_id, [])
        for source in sources:
            if source not in found and source != join_id:
                found.add(source)
                pending.append(source)
    return frozenset(found)
