"""The diagram the operations page draws: BPMN 2.0 XML with diagram interchange (DI).

A BPMN file whose DI has a shape for every node of the process is drawn as deployed. A YAML
or JSON definition (or BPMN without DI) gets BPMN XML generated from the model, laid out
left to right: each node in the layer of its longest path from a start, embedded
subprocesses laid out inside their box, event subprocesses in a row below.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise

from orchestrator.definitions.bpmn.detect import reads_as_xml
from orchestrator.definitions.bpmn.names import BPMN
from orchestrator.definitions.bpmn.reader import read_bpmn
from orchestrator.definitions.bpmn.safe_xml import read_xml
from orchestrator.definitions.loader import parse_source
from orchestrator.errors import DefinitionError
from orchestrator.model.definition import (
    ErrorBoundaryEvent,
    MessageBoundaryEvent,
    Node,
    ProcessDefinition,
    SequenceFlow,
    StartEvent,
    SubProcess,
    TimerBoundaryEvent,
)

BPMNDI = "http://www.omg.org/spec/BPMN/20100524/DI"
DC = "http://www.omg.org/spec/DD/20100524/DC"
DI = "http://www.omg.org/spec/DD/20100524/DI"

TASK = (100.0, 80.0)
EVENT = (36.0, 36.0)
GATEWAY = (50.0, 50.0)
GAP_X = 60.0
GAP_Y = 50.0
#: Room inside an expanded subprocess around what it holds.
PAD = 30.0
MARGIN = 40.0
#: A flow's lane through a layer it skips.
LANE = (0.0, 10.0)
#: Lane ids are `flow id + this + layer`: no element id holds a NUL.
_LANE_MARK = "\x00"

_Boundary = ErrorBoundaryEvent | TimerBoundaryEvent | MessageBoundaryEvent
_TAG = {
    "start_event": "startEvent",
    "end_event": "endEvent",
    "error_end_event": "endEvent",
    "terminate_end_event": "endEvent",
    "service_task": "serviceTask",
    "user_task": "userTask",
    "manual_task": "manualTask",
    "receive_task": "receiveTask",
    "call_activity": "callActivity",
    "subprocess": "subProcess",
    "exclusive_gateway": "exclusiveGateway",
    "parallel_gateway": "parallelGateway",
    "inclusive_gateway": "inclusiveGateway",
    "event_based_gateway": "eventBasedGateway",
    "error_boundary_event": "boundaryEvent",
    "timer_boundary_event": "boundaryEvent",
    "message_boundary_event": "boundaryEvent",
    "timer_catch_event": "intermediateCatchEvent",
    "message_catch_event": "intermediateCatchEvent",
}
_EVENT_DEFINITION = {
    "error_end_event": "errorEventDefinition",
    "terminate_end_event": "terminateEventDefinition",
    "error_boundary_event": "errorEventDefinition",
    "timer_boundary_event": "timerEventDefinition",
    "message_boundary_event": "messageEventDefinition",
    "timer_catch_event": "timerEventDefinition",
    "message_catch_event": "messageEventDefinition",
}


@dataclass(frozen=True)
class Box:
    x: float
    y: float
    w: float
    h: float

    def moved(self, dx: float, dy: float) -> Box:
        return Box(self.x + dx, self.y + dy, self.w, self.h)

    @property
    def cx(self) -> float:
        return self.x + self.w / 2

    @property
    def cy(self) -> float:
        return self.y + self.h / 2


@dataclass(frozen=True)
class Layout:
    """Where each node is (by id) and the bends of each flow (by id)."""

    boxes: dict[str, Box]
    waypoints: dict[str, list[tuple[float, float]]]


@dataclass(frozen=True)
class Diagram:
    xml: str
    #: Laid out here: the definition was deployed without a diagram.
    generated: bool
    #: Which BPMNDiagram of the file shows the process (a file may hold several); None: the
    #: first.
    diagram_id: str | None = None


def diagram_for(source: str, key: str) -> Diagram:
    """What to draw for process `key` of a deployed source."""
    if reads_as_xml(source):
        found = next((p for p in read_bpmn(source) if p.key == key), None)
        if found is None:
            raise DefinitionError([f"the deployed source holds no process {key!r}"])
        definition = ProcessDefinition.model_validate(found.data)
        root = read_xml(source).root
        if {node.id for node in definition.nodes} <= _shapes(root):
            return Diagram(source, False, _showing(root, key))
    else:
        definition = ProcessDefinition.model_validate(parse_source(source))
    return Diagram(generate_bpmn(definition), True)


def _shapes(root: ET.Element) -> set[str]:
    """The elements the file's DI draws."""
    return {shape.get("bpmnElement", "") for shape in root.iter(f"{{{BPMNDI}}}BPMNShape")} - {""}


def _showing(root: ET.Element, process_id: str) -> str | None:
    """The id of the BPMNDiagram whose plane is the process, or a collaboration with a
    participant (pool) for it."""
    pools = {
        collaboration.get("id")
        for collaboration in root.iter(f"{{{BPMN}}}collaboration")
        for participant in collaboration.iter(f"{{{BPMN}}}participant")
        if participant.get("processRef") == process_id
    }
    for diagram in root.iter(f"{{{BPMNDI}}}BPMNDiagram"):
        plane = diagram.find(f"{{{BPMNDI}}}BPMNPlane")
        shown = plane.get("bpmnElement") if plane is not None else None
        if shown is not None and (shown == process_id or shown in pools):
            return diagram.get("id")
    return None


# --- the layout ------------------------------------------------------------------------------


def layout(definition: ProcessDefinition) -> Layout:
    placed = _place_scope(definition, None).moved(MARGIN, MARGIN)
    nodes = {node.id: node for node in definition.nodes}
    waypoints = {
        flow.id: _route(flow, nodes, placed.boxes, placed.lanes.get(flow.id, []))
        for flow in definition.flows
    }
    return Layout(placed.boxes, waypoints)


@dataclass(frozen=True)
class _Placed:
    """One scope laid out, relative to its corner."""

    width: float
    height: float
    boxes: dict[str, Box]
    #: Flow id -> where a flow that skips layers passes each layer between (a box as wide
    #: as that layer, so no node sits in its way).
    lanes: dict[str, list[Box]]

    def moved(self, dx: float, dy: float) -> _Placed:
        return _Placed(
            self.width,
            self.height,
            {i: b.moved(dx, dy) for i, b in self.boxes.items()},
            {f: [b.moved(dx, dy) for b in lane] for f, lane in self.lanes.items()},
        )


def _size(node: Node) -> tuple[float, float]:
    if node.type.endswith("_gateway"):
        return GATEWAY
    if node.type.endswith("_event"):
        return EVENT
    return TASK


def _place_scope(definition: ProcessDefinition, scope: str | None) -> _Placed:
    """Lay out the nodes whose parent is `scope` (and, inside them, theirs)."""
    members = [n for n in definition.nodes if n.parent == scope]
    boundaries = [n for n in members if isinstance(n, _Boundary)]
    event_subs = [n for n in members if isinstance(n, SubProcess) and n.triggered_by_event]
    skip = {n.id for n in boundaries} | {n.id for n in event_subs}
    flowing = [n for n in members if n.id not in skip]

    inner: dict[str, _Placed] = {}
    sizes: dict[str, tuple[float, float]] = {}
    for node in [*flowing, *event_subs]:
        if isinstance(node, SubProcess):
            inner[node.id] = _place_scope(definition, node.id)
            w, h = inner[node.id].width, inner[node.id].height
            sizes[node.id] = (max(w + 2 * PAD, TASK[0]), max(h + 2 * PAD, TASK[1]))
        else:
            sizes[node.id] = _size(node)

    host = {n.id: n.attached_to for n in boundaries}
    edges = [
        (f.id, host.get(f.source, f.source), f.target, f.source in host)
        for f in definition.flows
        if host.get(f.source, f.source) in sizes and f.target in sizes
    ]
    starts = [n.id for n in flowing if isinstance(n, StartEvent)]
    columns, lanes = _columns([n.id for n in flowing], edges, starts)
    sizes.update({d: LANE for lane in lanes.values() for d in lane})

    width, height, boxes = _place_columns(columns, sizes)
    if event_subs:  # no flows reach them: a row of their own below the rest
        y = height + GAP_Y if boxes else 0.0
        x = 0.0
        for sub in event_subs:
            w, h = sizes[sub.id]
            boxes[sub.id] = Box(x, y, w, h)
            x += w + GAP_X
        width = max(width, x - GAP_X)
        height = y + max(sizes[s.id][1] for s in event_subs)

    placed_lanes = {f: [boxes.pop(d) for d in lane] for f, lane in lanes.items()}
    for sub_id, nested in inner.items():
        corner = boxes[sub_id]
        moved = nested.moved(corner.x + PAD, corner.y + PAD)
        boxes.update(moved.boxes)
        placed_lanes.update(moved.lanes)

    _place_boundaries(boundaries, boxes)
    height += EVENT[1] / 2 if boundaries else 0.0
    return _Placed(width, height, boxes, placed_lanes)


def _place_columns(
    columns: list[list[str]], sizes: dict[str, tuple[float, float]]
) -> tuple[float, float, dict[str, Box]]:
    """Each layer a column, its nodes stacked and centred on the tallest column's middle; a
    lane spans its column."""
    boxes: dict[str, Box] = {}
    height = max((_stack_height(col, sizes) for col in columns), default=0.0)
    x = 0.0
    for column in columns:
        width = max(sizes[i][0] for i in column)
        y = (height - _stack_height(column, sizes)) / 2
        for node_id in column:
            w, h = sizes[node_id]
            lane = _LANE_MARK in node_id
            boxes[node_id] = Box(x, y, width, h) if lane else Box(x + (width - w) / 2, y, w, h)
            y += h + GAP_Y
        x += width + GAP_X
    return max(x - GAP_X, 0.0), height, boxes


def _place_boundaries(boundaries: list[_Boundary], boxes: dict[str, Box]) -> None:
    """On the bottom edge of the activity they are attached to, from its right corner."""
    on_host: dict[str, int] = {}
    for boundary in boundaries:
        activity = boxes.get(boundary.attached_to)
        if activity is None:
            continue
        index = on_host[boundary.attached_to] = on_host.get(boundary.attached_to, 0) + 1
        w, h = EVENT
        cx = activity.x + activity.w - 20 - (index - 1) * (w + 8)
        boxes[boundary.id] = Box(cx - w / 2, activity.y + activity.h - h / 2, w, h)


def _stack_height(column: list[str], sizes: dict[str, tuple[float, float]]) -> float:
    return sum(sizes[i][1] for i in column) + GAP_Y * (len(column) - 1)


def _columns(
    ids: list[str], edges: list[tuple[str, str, str, bool]], starts: list[str]
) -> tuple[list[list[str]], dict[str, list[str]]]:
    """Longest-path layering of the graph without its back edges (loops). A flow that skips
    layers gets a lane in each layer between (so it runs around the nodes there, not through
    them). Each layer is ordered by where its predecessors stand, so flows cross less; what
    a boundary event leads to goes below. Edges: (flow, source, target, from a boundary)."""
    following: dict[str, list[str]] = {i: [] for i in ids}
    for _, source, target, _ in edges:
        if source != target:
            following[source].append(target)
    forward = _without_back_edges(ids, following, starts)
    layer = {i: 0 for i in ids}
    for node_id in _topological(ids, forward):
        for target in forward[node_id]:
            layer[target] = max(layer[target], layer[node_id] + 1)
    columns: list[list[str]] = [[] for _ in range(max(layer.values(), default=-1) + 1)]
    for node_id in ids:
        columns[layer[node_id]].append(node_id)
    preceding: dict[str, list[str]] = {i: [] for i in ids}
    lanes: dict[str, list[str]] = {}
    lower: set[str] = set()
    for flow_id, source, target, from_boundary in edges:
        if source == target or target not in forward[source]:
            continue  # a loop back: routed below, not through the layers
        chain = [f"{flow_id}{_LANE_MARK}{n}" for n in range(layer[source] + 1, layer[target])]
        for n, lane in enumerate(chain):
            columns[layer[source] + 1 + n].append(lane)
        if chain:
            lanes[flow_id] = chain
        steps = [source, *chain, target]
        for before, after in pairwise(steps):
            preceding.setdefault(after, []).append(before)
        if from_boundary:
            lower.update(steps[1:])
    _order(columns, preceding, lower)
    return columns, lanes


def _order(columns: list[list[str]], preceding: dict[str, list[str]], lower: set[str]) -> None:
    """Sort each layer by the mean position of its predecessors (the barycentre)."""
    position = {i: float(n) for n, i in enumerate(columns[0])} if columns else {}
    for column in columns[1:]:
        known = [position[p] for i in column for p in preceding.get(i, []) if p in position]
        fallback = sum(known) / len(known) if known else 0.0

        def rank(node_id: str, fallback: float = fallback) -> float:
            seen = [position[p] for p in preceding.get(node_id, []) if p in position]
            mean = sum(seen) / len(seen) if seen else fallback
            return mean + (0.5 if node_id in lower else 0.0)

        column.sort(key=rank)
        position.update({i: float(n) for n, i in enumerate(column)})


def _without_back_edges(
    ids: list[str], following: dict[str, list[str]], starts: list[str]
) -> dict[str, list[str]]:
    """The edges a depth-first walk from the starts does not find closing a cycle."""
    state: dict[str, int] = {}  # 1: on the walk's path, 2: done
    forward: dict[str, list[str]] = {i: [] for i in ids}
    for root in [*starts, *ids]:
        if root in state:
            continue
        state[root] = 1
        stack: list[tuple[str, Iterator[str]]] = [(root, iter(following[root]))]
        while stack:
            node_id, rest = stack[-1]
            target = next(rest, None)
            if target is None:
                state[node_id] = 2
                stack.pop()
            elif state.get(target) == 1:
                continue  # a back edge: it closes a loop
            else:
                forward[node_id].append(target)
                if target not in state:
                    state[target] = 1
                    stack.append((target, iter(following[target])))
    return forward


def _topological(ids: list[str], forward: dict[str, list[str]]) -> list[str]:
    waiting = {i: 0 for i in ids}
    for targets in forward.values():
        for target in targets:
            waiting[target] += 1
    ready = [i for i in ids if waiting[i] == 0]
    ordered: list[str] = []
    while ready:
        node_id = ready.pop(0)
        ordered.append(node_id)
        for target in forward[node_id]:
            waiting[target] -= 1
            if waiting[target] == 0:
                ready.append(target)
    return ordered


def _route(
    flow: SequenceFlow, nodes: dict[str, Node], boxes: dict[str, Box], lanes: list[Box]
) -> list[tuple[float, float]]:
    """Right angles: out of the source's right side (a boundary event's bottom, then under
    its activity), through its lanes, into the target's left; a loop back runs below both."""
    source, target = boxes[flow.source], boxes[flow.target]
    head: list[tuple[float, float]]
    boundary = nodes[flow.source]
    if isinstance(boundary, _Boundary):
        # the further left on its activity, the deeper it turns: two never run together
        activity = boxes[boundary.attached_to]
        depth = GAP_Y / 3 + (activity.x + activity.w - source.cx) / 4
        head = [(source.cx, source.y + source.h), (source.cx, source.y + source.h + depth)]
    else:
        head = [(source.x + source.w, source.cy)]
    if target.x < head[-1][0]:
        below = max(source.y + source.h, target.y + target.h) + GAP_Y / 2
        return [(source.cx, source.y + source.h), (source.cx, below), (target.cx, below),
                (target.cx, target.y + target.h)]  # fmt: skip
    ports = [*head]
    for lane in lanes:
        ports += [(lane.x, lane.cy), (lane.x + lane.w, lane.cy)]
    ports.append((target.x, target.cy))
    points = ports[: len(head)]
    for (ax, ay), (bx, by) in pairwise(ports[len(head) - 1 :]):
        if abs(ay - by) >= 1:  # turn in the gap before the next layer: no node stands there
            middle = max(ax, bx - GAP_X / 2)
            points += [(middle, ay), (middle, by)]
        points.append((bx, by))
    return points


# --- the XML ---------------------------------------------------------------------------------


def generate_bpmn(definition: ProcessDefinition) -> str:
    """BPMN 2.0 XML for the model, its DI from `layout`: what bpmn-js draws for a definition
    deployed without one. Only what the drawing shows (types, names, markers)."""
    for prefix, namespace in (("bpmn", BPMN), ("bpmndi", BPMNDI), ("dc", DC), ("di", DI)):
        ET.register_namespace(prefix, namespace)
    used = {node.id for node in definition.nodes} | {flow.id for flow in definition.flows}
    process_id = _fresh(definition.key, used)
    namespace = "https://orchestrator.dev/generated"
    root = ET.Element(
        _b("definitions"), {"id": _fresh("definitions", used), "targetNamespace": namespace}
    )
    process = ET.SubElement(root, _b("process"), {"id": process_id, "isExecutable": "true"})
    if definition.name:
        process.set("name", definition.name)
    elements = {node.id: _semantic(node, used) for node in definition.nodes}
    for node in definition.nodes:
        parent = elements.get(node.parent) if node.parent else None
        (process if parent is None else parent).append(elements[node.id])
    nodes = {node.id: node for node in definition.nodes}
    for flow in definition.flows:
        attributes = {"id": flow.id, "sourceRef": flow.source, "targetRef": flow.target}
        if flow.name:
            attributes["name"] = flow.name
        scope = nodes[flow.source].parent
        container = elements.get(scope) if scope else None
        ET.SubElement(process if container is None else container, _b("sequenceFlow"), attributes)

    drawn = layout(definition)
    diagram = ET.SubElement(root, f"{{{BPMNDI}}}BPMNDiagram", {"id": _fresh("diagram", used)})
    plane = ET.SubElement(
        diagram,
        f"{{{BPMNDI}}}BPMNPlane",
        {"id": _fresh("plane", used), "bpmnElement": process_id},
    )
    for node in definition.nodes:
        box = drawn.boxes[node.id]
        attributes = {"id": _fresh(f"{node.id}_di", used), "bpmnElement": node.id}
        if isinstance(node, SubProcess):
            attributes["isExpanded"] = "true"
        shape = ET.SubElement(plane, f"{{{BPMNDI}}}BPMNShape", attributes)
        ET.SubElement(shape, f"{{{DC}}}Bounds", _bounds(box))
    for flow in definition.flows:
        edge = ET.SubElement(
            plane,
            f"{{{BPMNDI}}}BPMNEdge",
            {"id": _fresh(f"{flow.id}_di", used), "bpmnElement": flow.id},
        )
        for x, y in drawn.waypoints[flow.id]:
            ET.SubElement(edge, f"{{{DI}}}waypoint", {"x": _num(x), "y": _num(y)})
    return ET.tostring(root, encoding="unicode", xml_declaration=True)


def _semantic(node: Node, used: set[str]) -> ET.Element:
    element = ET.Element(_b(_TAG[node.type]), {"id": node.id})
    if node.name:
        element.set("name", node.name)
    elif _TAG[node.type].endswith(("Task", "Activity", "subProcess")):
        element.set("name", node.id)  # an empty box says nothing
    if isinstance(node, _Boundary):
        element.set("attachedToRef", node.attached_to)
        if not isinstance(node, ErrorBoundaryEvent) and not node.interrupting:
            element.set("cancelActivity", "false")
    if isinstance(node, SubProcess) and node.triggered_by_event:
        element.set("triggeredByEvent", "true")
    multi = getattr(node, "multi_instance", None)
    if multi is not None:
        loop = ET.SubElement(element, _b("multiInstanceLoopCharacteristics"))
        if multi.sequential:
            loop.set("isSequential", "true")
    definition = _EVENT_DEFINITION.get(node.type)
    if isinstance(node, StartEvent):
        if not node.interrupting:
            element.set("isInterrupting", "false")
        definition = (
            "timerEventDefinition"
            if node.timer
            else "messageEventDefinition"
            if node.message
            else "errorEventDefinition"
            if node.error
            else None
        )
    if definition is not None:
        ET.SubElement(element, _b(definition), {"id": _fresh(f"{node.id}_event", used)})
    return element


def _b(local: str) -> str:
    return f"{{{BPMN}}}{local}"


def _fresh(base: str, used: set[str]) -> str:
    """An XML id no element of the definition has."""
    candidate, n = base, 1
    while candidate in used:
        n += 1
        candidate = f"{base}_{n}"
    used.add(candidate)
    return candidate


def _bounds(box: Box) -> dict[str, str]:
    return {"x": _num(box.x), "y": _num(box.y), "width": _num(box.w), "height": _num(box.h)}


def _num(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:.1f}"
