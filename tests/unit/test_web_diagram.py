"""The operations page's diagram: generated BPMN DI for definitions deployed without one."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path
from xml.etree.ElementTree import Element

import pytest

from orchestrator.definitions.bpmn.names import BPMN
from orchestrator.definitions.bpmn.reader import read_bpmn
from orchestrator.definitions.bpmn.safe_xml import read_xml
from orchestrator.definitions.loader import load_definition
from orchestrator.model.definition import ProcessDefinition
from orchestrator.web.diagram import (
    BPMNDI,
    DC,
    DI,
    Box,
    Diagram,
    diagram_for,
    generate_bpmn,
    layout,
)
from tests.support.harness import ROOT

DATA = ROOT / "tests" / "data" / "bpmn"
ORDER_YAML = ROOT / "orchestrator" / "definitions" / "examples" / "order.yaml"
#: Files whose processes the reader takes (the others are refused on purpose).
READABLE = [
    "c7_order.bpmn",
    "c8_order.bpmn",
    "call_activity_parent.bpmn",
    "event_subprocesses_c7.bpmn",
    "inclusive.bpmn",
    "messages_c7.bpmn",
    "subprocess_and_mi.bpmn",
    "timers_c7.bpmn",
    "user_task.bpmn",
]

LOOP = """
key: loop
nodes:
  - {id: s, type: start_event}
  - {id: work, type: service_task, topic: t}
  - {id: again, type: exclusive_gateway, default: done}
  - {id: e, type: end_event}
flows:
  - {id: f1, from: s, to: work}
  - {id: f2, from: work, to: again}
  - {id: back, from: again, to: work, condition: "n < 3"}
  - {id: done, from: again, to: e}
"""


def _definitions(path: Path) -> list[ProcessDefinition]:
    return [ProcessDefinition.model_validate(p.data) for p in read_bpmn(path.read_bytes())]


def cases() -> list[tuple[str, ProcessDefinition]]:
    found = [(ORDER_YAML.name, load_definition(ORDER_YAML.read_text()).definition)]
    found.append(("loop", load_definition(LOOP).definition))
    for name in READABLE:
        found += [(f"{name}:{d.key}", d) for d in _definitions(DATA / name)]
    return found


def _drawn(root: Element, kind: str) -> dict[str, Element]:
    return {e.get("bpmnElement", ""): e for e in root.iter(f"{{{BPMNDI}}}{kind}")}


@pytest.mark.parametrize(("name", "definition"), cases(), ids=[name for name, _ in cases()])
def test_every_node_has_a_shape_and_every_flow_an_edge(
    name: str, definition: ProcessDefinition
) -> None:
    xml = generate_bpmn(definition)
    root = read_xml(xml).root
    shapes, edges = _drawn(root, "BPMNShape"), _drawn(root, "BPMNEdge")
    assert set(shapes) == {node.id for node in definition.nodes}
    assert set(edges) == {flow.id for flow in definition.flows}
    for shape in shapes.values():
        bounds = shape.find(f"{{{DC}}}Bounds")
        assert bounds is not None
        assert float(bounds.get("width", "0")) > 0 and float(bounds.get("height", "0")) > 0
    for edge in edges.values():
        assert len(edge.findall(f"{{{DI}}}waypoint")) >= 2
    # the semantic part: every node once, nested in its subprocess, ids unique
    ids = [e.get("id") for e in root.iter() if e.get("id") is not None]
    assert len(ids) == len(set(ids))
    for node in definition.nodes:
        found = [e for e in root.iter() if e.get("id") == node.id]
        assert len(found) == 1 and found[0].tag.startswith(f"{{{BPMN}}}")


def _inside(inner: Box, outer: Box) -> bool:
    return (
        outer.x <= inner.x
        and inner.x + inner.w <= outer.x + outer.w
        and outer.y <= inner.y
        and inner.y + inner.h <= outer.y + outer.h
    )


def test_layers_run_left_to_right_and_a_loop_goes_back_below() -> None:
    definition = load_definition(LOOP).definition
    drawn = layout(definition)
    xs = [drawn.boxes[i].x for i in ("s", "work", "again", "e")]
    assert xs == sorted(xs) and len(set(xs)) == 4
    back = drawn.waypoints["back"]
    lowest = max(b.y + b.h for b in drawn.boxes.values())
    assert max(y for _, y in back) > lowest - drawn.boxes["work"].h  # runs under the boxes


def test_subprocess_contents_sit_inside_its_box() -> None:
    (definition,) = [
        d for d in _definitions(DATA / "subprocess_and_mi.bpmn") if any(
            n.type == "subprocess" for n in d.nodes)
    ]  # fmt: skip
    drawn = layout(definition)
    for node in definition.nodes:
        if node.parent is not None:
            assert _inside(drawn.boxes[node.id], drawn.boxes[node.parent]), node.id
    overlapping = [
        (a, b)
        for a, box in drawn.boxes.items()
        for b, other in drawn.boxes.items()
        if a < b
        and not _inside(box, other)
        and not _inside(other, box)
        and box.x < other.x + other.w
        and other.x < box.x + box.w
        and box.y < other.y + other.h
        and other.y < box.y + box.h
    ]
    boundaries = {n.id for n in definition.nodes if n.type.endswith("boundary_event")}
    assert [pair for pair in overlapping if not boundaries & set(pair)] == []


def test_bpmn_with_its_own_diagram_is_drawn_as_deployed() -> None:
    source = (DATA / "c7_order.bpmn").read_text()
    key = read_bpmn(source)[0].key
    assert diagram_for(source, key) == Diagram(source, False, "BPMNDiagram_1")


def test_bpmn_without_a_diagram_and_yaml_get_one() -> None:
    source = (DATA / "c7_order.bpmn").read_text()
    key = read_bpmn(source)[0].key
    start = source.index("<bpmndi:BPMNDiagram")
    stripped = source[:start] + source[source.index("</bpmndi:BPMNDiagram>") + 21 :]
    drawn = diagram_for(stripped, key)
    assert drawn.generated and "BPMNShape" in drawn.xml
    drawn = diagram_for(ORDER_YAML.read_text(), "order")
    assert drawn.generated and 'bpmnElement="charge_payment"' in drawn.xml


def test_the_diagram_of_the_process_is_chosen_among_several() -> None:
    source = (DATA / "c7_order.bpmn").read_text()
    key = read_bpmn(source)[0].key
    start = source.index("<bpmndi:BPMNDiagram")
    other = (
        '<bpmndi:BPMNDiagram id="Other"><bpmndi:BPMNPlane id="OtherPlane" bpmnElement="other" />'
        "</bpmndi:BPMNDiagram>"
    )
    two = source[:start] + other + source[start:]
    assert diagram_for(two, key).diagram_id == "BPMNDiagram_1"


def _crosses(segment: tuple[tuple[float, float], tuple[float, float]], box: Box) -> bool:
    """Does an upright or level segment run through the box's inside?"""
    (x1, y1), (x2, y2) = segment
    left, right = min(x1, x2), max(x1, x2)
    top, bottom = min(y1, y2), max(y1, y2)
    return (
        left < box.x + box.w - 1
        and right > box.x + 1
        and top < box.y + box.h - 1
        and bottom > box.y + 1
    )


@pytest.mark.parametrize(("name", "definition"), cases(), ids=[name for name, _ in cases()])
def test_no_flow_runs_through_a_node(name: str, definition: ProcessDefinition) -> None:
    drawn = layout(definition)
    nodes = {node.id: node for node in definition.nodes}

    def around(node_id: str) -> set[str]:
        """The node, the activity it is attached to, and the subprocesses it sits in."""
        found: set[str] = set()
        current: str | None = node_id
        while current is not None:
            found.add(current)
            attached = getattr(nodes[current], "attached_to", None)
            if attached is not None:
                found.add(attached)
            current = nodes[attached or current].parent
        return found

    crossing = [
        (flow.id, node_id)
        for flow in definition.flows
        for segment in pairwise(drawn.waypoints[flow.id])
        for node_id, box in drawn.boxes.items()
        if node_id not in around(flow.source) | around(flow.target)
        and not nodes[node_id].type.endswith("boundary_event")  # they sit on an edge
        and _crosses(segment, box)
    ]
    assert crossing == []
