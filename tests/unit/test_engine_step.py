from __future__ import annotations

import uuid
from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.definitions.loader import Process, load_definition
from orchestrator.demo import example_definition
from orchestrator.engine.state import CreateTask, InstanceEnded, RaiseIncident, Transition
from orchestrator.engine.step import complete_task, start_instance

ORDER = load_definition(example_definition())


def created(transition: Transition) -> list[CreateTask]:
    return [e for e in transition.effects if isinstance(e, CreateTask)]


def run_order(quantity: int) -> list[str]:
    """Complete every task as the example workers would; return the nodes visited."""
    transition = start_instance(ORDER, str(uuid.uuid4()), {"quantity": quantity})
    visited = []
    while tasks := created(transition):
        (task,) = tasks
        visited.append(task.node_id)
        result = {"reserved": quantity <= 10} if task.node_id == "reserve_stock" else {}
        transition = complete_task(ORDER, transition.state, task.task_id, result)
    assert transition.state.status == "completed"
    assert InstanceEnded("completed") in transition.effects
    return visited


def test_order_paths() -> None:
    assert run_order(3) == ["reserve_stock", "charge_payment", "ship_order"]
    assert run_order(11) == ["reserve_stock"]


def test_task_ids_are_deterministic() -> None:
    instance_id = str(uuid.uuid4())
    first = start_instance(ORDER, instance_id, {})
    second = start_instance(ORDER, instance_id, {})
    assert first == second


def test_completion_merges_variables() -> None:
    transition = start_instance(ORDER, str(uuid.uuid4()), {"quantity": 1, "keep": True})
    task = created(transition)[0]
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
def test_any_quantity_finishes_with_at_most_three_tasks(quantities: list[int]) -> None:
    for quantity in quantities:
        assert 1 <= len(run_order(quantity)) <= 3
