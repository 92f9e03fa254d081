"""The demo's order process (orchestrator/definitions/examples/order.bpmn): it deploys, it
forks and joins with parallel gateways, and it has a diagram Camunda Modeler can open."""

from __future__ import annotations

from orchestrator.daemon.admin import load_processes
from orchestrator.definitions.bpmn.names import qname
from orchestrator.definitions.bpmn.safe_xml import read_xml
from orchestrator.demo import example_definition
from orchestrator.model.definition import (
    ErrorBoundaryEvent,
    ExclusiveGateway,
    ParallelGateway,
    RetryPolicy,
    ServiceTask,
)

BPMNDI = "http://www.omg.org/spec/BPMN/20100524/DI"
DC = "http://www.omg.org/spec/DD/20100524/DC"
DI = "http://www.omg.org/spec/DD/20100524/DI"


def test_example_bpmn_deploys_with_a_parallel_fork_and_join() -> None:
    (process,) = load_processes(example_definition())
    assert process.key == "order"
    # As the YAML example had it: one active instance per order number, a second start
    # gets the first instance back.
    policy = process.definition.business_key
    assert (policy.unique, policy.on_duplicate) == (True, "return_existing")
    assert process.topics == {"reserve-stock", "check-fraud", "charge-payment", "ship-order"}

    forks = [
        node_id
        for node_id, node in process.nodes.items()
        if isinstance(node, ParallelGateway) and len(process.outgoing[node_id]) == 2
    ]
    assert forks == ["fork"]
    assert {flow.target for flow in process.outgoing["fork"]} == {"reserve_stock", "check_fraud"}
    assert isinstance(process.nodes["join"], ParallelGateway)
    assert {flow.source for flow in process.incoming["join"]} == {"reserve_stock", "check_fraud"}

    decide = process.nodes["can_go_on"]
    assert isinstance(decide, ExclusiveGateway) and decide.default == "to_refused"
    (to_charge,) = [flow for flow in process.outgoing["can_go_on"] if flow.condition]
    assert to_charge.condition == "${reserved == true && fraud_score < 80}"
    assert "to_charge" in process.conditions


def test_example_bpmn_keeps_the_task_options_of_the_yaml() -> None:
    (process,) = load_processes(example_definition())
    reserve = process.nodes["reserve_stock"]
    assert isinstance(reserve, ServiceTask)
    assert reserve.retry == RetryPolicy(
        max_attempts=5, initial_backoff_ms=500, backoff_coefficient=2, max_backoff_ms=30_000
    )
    ship = process.nodes["ship_order"]
    assert isinstance(ship, ServiceTask) and ship.lock_ms == 60_000
    (declined,) = process.boundaries["charge_payment"]
    assert isinstance(declined, ErrorBoundaryEvent)
    assert declined.error_code == "PAYMENT_DECLINED"
    assert declined.message_variable == "decline_reason"
    assert [flow.target for flow in process.outgoing[declined.id]] == ["declined"]


def test_example_bpmn_has_a_diagram_of_every_node_and_flow() -> None:
    (process,) = load_processes(example_definition())
    root = read_xml(example_definition()).root
    (diagram,) = root.findall(qname(BPMNDI, "BPMNDiagram"))
    (plane,) = diagram.findall(qname(BPMNDI, "BPMNPlane"))
    assert plane.get("bpmnElement") == "order"

    shapes = {shape.get("bpmnElement"): shape for shape in plane.iter(qname(BPMNDI, "BPMNShape"))}
    assert set(shapes) == set(process.nodes)
    for shape in shapes.values():
        bounds = shape.find(qname(DC, "Bounds"))
        assert bounds is not None
        assert float(bounds.get("width", 0)) > 0 and float(bounds.get("height", 0)) > 0

    edges = {edge.get("bpmnElement"): edge for edge in plane.iter(qname(BPMNDI, "BPMNEdge"))}
    assert set(edges) == {flow.id for flow in process.definition.flows}
    for edge in edges.values():
        assert len(edge.findall(qname(DI, "waypoint"))) >= 2

    # Left to right: the start is leftmost, the shipped end rightmost.
    def x(node_id: str) -> float:
        bounds = shapes[node_id].find(qname(DC, "Bounds"))
        assert bounds is not None
        return float(bounds.get("x", 0))

    assert x("start") == min(map(x, shapes))
    assert x("shipped") == max(map(x, shapes))
    assert x("fork") < x("reserve_stock") == x("check_fraud") < x("join") < x("can_go_on")
