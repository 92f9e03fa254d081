from __future__ import annotations

from typing import Any

import orjson
import pytest

from orchestrator.definitions.loader import content_hash, load_definition
from orchestrator.demo import example_yaml
from orchestrator.errors import DefinitionError
from orchestrator.model.definition import ServiceTask, parse_duration_ms


def definition(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "key": "p",
        "nodes": [
            {"id": "start", "type": "start_event"},
            {"id": "work", "type": "service_task", "topic": "work", "lock": "10s"},
            {"id": "gw", "type": "exclusive_gateway", "default": "to_b"},
            {"id": "a", "type": "end_event"},
            {"id": "b", "type": "end_event"},
        ],
        "flows": [
            {"id": "to_work", "from": "start", "to": "work"},
            {"id": "to_gw", "from": "work", "to": "gw"},
            {"id": "to_a", "from": "gw", "to": "a", "condition": "amount > 10"},
            {"id": "to_b", "from": "gw", "to": "b"},
        ],
    }
    base.update(changes)
    return base


def load(data: dict[str, Any]) -> Any:
    return load_definition(orjson.dumps(data))


def problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(DefinitionError) as error:
        load(data)
    return error.value.problems


def test_yaml_example_loads() -> None:
    process = load_definition(example_yaml())
    assert process.topics == {"reserve-stock", "charge-payment", "ship-order"}
    node = process.nodes["ship_order"]
    assert isinstance(node, ServiceTask) and node.lock_ms == 60_000


def test_valid_definition_compiles() -> None:
    process = load(definition())
    assert process.start_id == "start"
    assert [f.id for f in process.outgoing["gw"]] == ["to_a", "to_b"]
    assert "to_a" in process.conditions


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"flows": definition()["flows"][1:]}, "node 'work': has no incoming flow"),
        ({"nodes": definition()["nodes"][1:]}, "needs exactly one start event"),
        (
            {"flows": [*definition()["flows"][:3], {"id": "to_b", "from": "gw", "to": "zz"}]},
            "flow 'to_b': 'to' names unknown node 'zz'",
        ),
        (
            {
                "flows": [
                    *definition()["flows"][:2],
                    {"id": "to_a", "from": "gw", "to": "a", "condition": "amount >"},
                    definition()["flows"][3],
                ]
            },
            "flow 'to_a': condition:",
        ),
        (
            {
                "nodes": [
                    *definition()["nodes"][:2],
                    {"id": "gw", "type": "exclusive_gateway", "default": "nope"},
                    *definition()["nodes"][3:],
                ]
            },
            "node 'gw': default flow 'nope' is not one of its outgoing flows",
        ),
        (
            {"nodes": [*definition()["nodes"], {"id": "work", "type": "end_event"}]},
            "node 'work': duplicate id",
        ),
    ],
)
def test_invalid_definitions_name_the_element(change: dict[str, Any], expected: str) -> None:
    found = problems(definition(**change))
    assert any(expected in problem for problem in found), found


def test_schema_errors_name_the_element() -> None:
    nodes = definition()["nodes"]
    nodes[1] = {"id": "work", "type": "service_task", "lock": "10s"}  # no topic
    found = problems(definition(nodes=nodes))
    assert any("node 'work' (nodes[1])" in p and "topic" in p for p in found), found


def test_unknown_node_type_and_bad_yaml() -> None:
    nodes = definition()["nodes"]
    nodes[1] = {"id": "work", "type": "script_task"}
    assert any("node 'work'" in p for p in problems(definition(nodes=nodes)))
    with pytest.raises(DefinitionError, match="not valid YAML"):
        load_definition("key: [unclosed")
    with pytest.raises(DefinitionError, match="mapping"):
        load_definition("- just a list")


def test_content_hash_ignores_formatting() -> None:
    a = load(definition()).definition
    b = load_definition(orjson.dumps(definition(), option=orjson.OPT_INDENT_2)).definition
    assert content_hash(a) == content_hash(b)
    changed = definition()
    changed["nodes"][1]["lock"] = "11s"
    assert content_hash(load(changed).definition) != content_hash(a)


@pytest.mark.parametrize(
    ("value", "ms"),
    [(1500, 1500), ("1500ms", 1500), ("1.5s", 1500), ("5m", 300_000), ("1h", 3_600_000)],
)
def test_durations(value: object, ms: int) -> None:
    assert parse_duration_ms(value) == ms


def test_bad_duration() -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration_ms("soon")


def with_boundaries(*events: dict[str, Any], flows: list[dict[str, Any]]) -> dict[str, Any]:
    base = definition()
    nodes = [*base["nodes"], *events, {"id": "failed", "type": "end_event"}]
    return definition(nodes=nodes, flows=[*base["flows"], *flows])


def boundary(event_id: str, attached_to: str = "work", **extra: Any) -> dict[str, Any]:
    return {"id": event_id, "type": "error_boundary_event", "attached_to": attached_to, **extra}


def test_error_boundary_events_compile() -> None:
    process = load(
        with_boundaries(
            boundary("declined", error_code="DECLINED"),
            boundary("anything"),
            flows=[
                {"id": "f1", "from": "declined", "to": "failed"},
                {"id": "f2", "from": "anything", "to": "failed"},
            ],
        )
    )
    assert [b.id for b in process.boundaries["work"]] == ["declined", "anything"]
    assert process.catching_boundary("work", "DECLINED").id == "declined"
    assert process.catching_boundary("work", "OTHER").id == "anything"
    assert process.catching_boundary("gw", "DECLINED") is None


@pytest.mark.parametrize(
    ("events", "flows", "expected"),
    [
        (
            [boundary("b1", attached_to="gw")],
            [{"id": "f1", "from": "b1", "to": "failed"}],
            "node 'b1': attached to 'gw', which is not a task, subprocess, call activity "
            "or receive task",
        ),
        ([boundary("b1")], [], "node 'b1': an error_boundary_event needs exactly one outgoing"),
        (
            [boundary("b1")],
            [
                {"id": "f1", "from": "b1", "to": "failed"},
                {"id": "f2", "from": "start", "to": "b1"},
            ],
            "node 'b1': an error_boundary_event cannot have incoming flows",
        ),
        (
            [boundary("b1", error_code="X"), boundary("b2", error_code="X")],
            [
                {"id": "f1", "from": "b1", "to": "failed"},
                {"id": "f2", "from": "b2", "to": "failed"},
            ],
            "node 'b2': another error boundary event on 'work' already catches error code 'X'",
        ),
        (
            [boundary("b1"), boundary("b2")],
            [
                {"id": "f1", "from": "b1", "to": "failed"},
                {"id": "f2", "from": "b2", "to": "failed"},
            ],
            "already catches every error code",
        ),
        (
            [boundary("b1", code_variable="not a name")],
            [{"id": "f1", "from": "b1", "to": "failed"}],
            "node 'b1': invalid variable name 'not a name'",
        ),
    ],
)
def test_invalid_boundary_events_name_the_element(
    events: list[dict[str, Any]], flows: list[dict[str, Any]], expected: str
) -> None:
    found = problems(with_boundaries(*events, flows=flows))
    assert any(expected in problem for problem in found), found


def test_end_event_reached_only_through_a_boundary_event_is_reachable() -> None:
    load(with_boundaries(boundary("b1"), flows=[{"id": "f1", "from": "b1", "to": "failed"}]))
