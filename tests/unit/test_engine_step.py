from __future__ import annotations

import uuid
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.daemon.admin import load_processes
from orchestrator.definitions.loader import Process, load_definition
from orchestrator.demo import example_definition
from orchestrator.engine.state import CreateTask, InstanceEnded, RaiseIncident, Transition
from orchestrator.engine.step import (
    EngineStepError,
    cancel_instance,
    complete_task,
    error_task,
    start_instance,
)

(ORDER,) = load_processes(example_definition())


def created(transition: Transition) -> list[CreateTask]:
    return [e for e in transition.effects if isinstance(e, CreateTask)]


def worker_result(node_id: str, quantity: int, fraud_score: int) -> dict[str, Any]:
    """What the example workers would return at this node."""
    if node_id == "reserve_stock":
        return {"reserved": quantity <= 10}
    if node_id == "check_fraud":
        return {"fraud_score": fraud_score}
    return {}


def run_order(quantity: int, fraud_score: int = 10, *, reverse: bool = False) -> list[set[str]]:
    """Complete every task as the example workers would, the tasks open at once in creation
    order (or `reverse`d); return the nodes of the tasks created at each step."""
    transition = start_instance(ORDER, str(uuid.uuid4()), {"quantity": quantity})
    steps: list[set[str]] = []
    open_tasks: list[CreateTask] = []
    while True:
        if new := created(transition):
            steps.append({task.node_id for task in new})
            open_tasks.extend(new)
        if not open_tasks:
            break
        task = open_tasks.pop(-1 if reverse else 0)
        result = worker_result(task.node_id, quantity, fraud_score)
        transition = complete_task(ORDER, transition.state, task.task_id, result)
    assert transition.state.status == "completed"
    assert InstanceEnded("completed") in transition.effects
    return steps


def test_order_paths() -> None:
    both = {"reserve_stock", "check_fraud"}
    assert run_order(3) == [both, {"charge_payment"}, {"ship_order"}]
    assert run_order(3, reverse=True) == [both, {"charge_payment"}, {"ship_order"}]
    assert run_order(11) == [both]
    assert run_order(3, fraud_score=80) == [both]
    assert run_order(3, fraud_score=79) == [both, {"charge_payment"}, {"ship_order"}]


def test_the_join_waits_for_both_branches() -> None:
    transition = start_instance(ORDER, str(uuid.uuid4()), {"quantity": 1})
    first, second = sorted(created(transition), key=lambda task: task.node_id)
    after_one = complete_task(ORDER, transition.state, first.task_id, {"fraud_score": 5})
    assert not created(after_one)
    assert after_one.state.status == "active"
    after_both = complete_task(ORDER, after_one.state, second.task_id, {"reserved": True})
    assert [task.node_id for task in created(after_both)] == ["charge_payment"]


def test_task_ids_are_deterministic() -> None:
    instance_id = str(uuid.uuid4())
    first = start_instance(ORDER, instance_id, {})
    second = start_instance(ORDER, instance_id, {})
    assert first == second


def test_completion_merges_variables() -> None:
    transition = start_instance(ORDER, str(uuid.uuid4()), {"quantity": 1, "keep": True})
    task = next(t for t in created(transition) if t.node_id == "reserve_stock")
    after = complete_task(ORDER, transition.state, task.task_id, {"reserved": True})
    assert after.state.variables == {"quantity": 1, "keep": True, "reserved": True}


def gateway_without_default() -> Process:
    data: dict[str, Any] = {
        "key": "g",
        "nodes": [
            {"id": "s", "type": "start_event"},
            {"id": "gw", "type": "exclusive_gateway"},
            {"id": "e1", "type": "end_event"},
            {"id": "e2", "type": "end_event"},
        ],
        "flows": [
            {"id": "f0", "from": "s", "to": "gw"},
            {"id": "f1", "from": "gw", "to": "e1", "condition": "x == 1"},
            {"id": "f2", "from": "gw", "to": "e2", "condition": "x == 2"},
        ],
    }
    return load_definition(orjson.dumps(data))


def test_no_matching_flow_raises_an_incident() -> None:
    transition = start_instance(gateway_without_default(), str(uuid.uuid4()), {"x": 3})
    incidents = [e for e in transition.effects if isinstance(e, RaiseIncident)]
    assert len(incidents) == 1 and incidents[0].node_id == "gw"
    assert transition.state.status == "active"
    assert [t.node_id for t in transition.state.tokens] == ["gw"]


@given(st.integers(min_value=-5, max_value=20))
def test_gateway_takes_exactly_one_branch(x: int) -> None:
    transition = start_instance(gateway_without_default(), str(uuid.uuid4()), {"x": x})
    ended = InstanceEnded("completed") in transition.effects
    incident = any(isinstance(e, RaiseIncident) for e in transition.effects)
    assert ended != incident
    assert ended == (x in (1, 2))


@given(st.lists(st.integers(min_value=0, max_value=30), min_size=1, max_size=20))
def test_any_quantity_finishes_with_at_most_four_tasks(quantities: list[int]) -> None:
    for quantity in quantities:
        steps = run_order(quantity, fraud_score=quantity * 3)
        assert 2 <= sum(len(step) for step in steps) <= 4


def boundary_process(*, catch_all: bool = False) -> Process:
    """start -> charge (with PAYMENT_DECLINED boundary -> declined) -> ship -> end."""
    nodes: list[dict[str, Any]] = [
        {"id": "s", "type": "start_event"},
        {"id": "charge", "type": "service_task", "topic": "charge"},
        {
            "id": "declined",
            "type": "error_boundary_event",
            "attached_to": "charge",
            "error_code": "PAYMENT_DECLINED",
            "code_variable": "error_code",
            "message_variable": "error_message",
        },
        {"id": "refund", "type": "service_task", "topic": "refund"},
        {"id": "ship", "type": "service_task", "topic": "ship"},
        {"id": "e", "type": "end_event"},
        {"id": "e_declined", "type": "end_event"},
    ]
    flows = [
        {"id": "f1", "from": "s", "to": "charge"},
        {"id": "f2", "from": "charge", "to": "ship"},
        {"id": "f3", "from": "ship", "to": "e"},
        {"id": "f4", "from": "declined", "to": "e_declined"},
    ]
    if catch_all:
        nodes.append({"id": "any_error", "type": "error_boundary_event", "attached_to": "charge"})
        flows.append({"id": "f5", "from": "any_error", "to": "refund"})
        flows.append({"id": "f6", "from": "refund", "to": "e"})
    else:
        nodes = [n for n in nodes if n["id"] != "refund"]
    return load_definition(orjson.dumps({"key": "pay", "nodes": nodes, "flows": flows}))


def test_business_error_leaves_through_the_matching_boundary_event() -> None:
    process = boundary_process()
    transition = start_instance(process, str(uuid.uuid4()), {"amount": 10})
    (task,) = created(transition)
    after = error_task(
        process, transition.state, task.task_id, "PAYMENT_DECLINED", "card", {"why": "limit"}
    )
    assert after is not None
    assert after.state.status == "completed"
    assert after.state.variables == {
        "amount": 10,
        "why": "limit",
        "error_code": "PAYMENT_DECLINED",
        "error_message": "card",
    }
    assert not created(after)
    assert any(getattr(e, "kind", None) == "error_caught" for e in after.effects)


def test_uncaught_business_error_returns_none() -> None:
    process = boundary_process()
    transition = start_instance(process, str(uuid.uuid4()), {})
    (task,) = created(transition)
    assert error_task(process, transition.state, task.task_id, "OTHER", None, {}) is None


def test_exact_code_wins_over_catch_all() -> None:
    process = boundary_process(catch_all=True)
    transition = start_instance(process, str(uuid.uuid4()), {})
    (task,) = created(transition)
    exact = error_task(process, transition.state, task.task_id, "PAYMENT_DECLINED", None, {})
    other = error_task(process, transition.state, task.task_id, "TIMEOUT", None, {})
    assert exact is not None and exact.state.status == "completed"
    assert other is not None and [t.node_id for t in created(other)] == ["refund"]


def test_cancel_ends_an_active_instance_once() -> None:
    process = boundary_process()
    transition = start_instance(process, str(uuid.uuid4()), {})
    cancelled = cancel_instance(transition.state, "customer asked")
    assert cancelled.state.status == "cancelled"
    assert cancelled.state.tokens == ()
    assert InstanceEnded("cancelled") in cancelled.effects
    with pytest.raises(EngineStepError):
        cancel_instance(cancelled.state, None)
