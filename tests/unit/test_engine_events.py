"""The pure core on timers and messages: catch events, receive tasks, boundary events,
event-based gateways."""

from __future__ import annotations

import uuid
from typing import Any

from orchestrator.definitions.graph import Process
from orchestrator.definitions.loader import compile_definition
from orchestrator.engine.state import (
    CloseWait,
    CreateTask,
    InstanceEnded,
    InstanceState,
    OpenSubscription,
    RaiseIncident,
    StartTimer,
    Transition,
    WithdrawTask,
)
from orchestrator.engine.step import (
    cancel_instance,
    complete_task,
    message_correlated,
    start_instance,
    timer_fired,
)


def process(nodes: list[dict[str, Any]], flows: list[tuple[str, str]]) -> Process:
    return compile_definition(
        {
            "key": "p",
            "nodes": nodes,
            "flows": [{"id": f"f_{a}_{b}", "from": a, "to": b} for a, b in flows],
        }
    )


def timer(value: str, kind: str = "duration") -> dict[str, str]:
    return {"kind": kind, "value": value}


def start(proc: Process, **variables: Any) -> Transition:
    return start_instance(proc, str(uuid.uuid4()), variables)


def of(transition: Transition, kind: type) -> list[Any]:
    return [e for e in transition.effects if isinstance(e, kind)]


def ended(transition: Transition) -> str | None:
    return next((e.status for e in transition.effects if isinstance(e, InstanceEnded)), None)


def task_of(state: InstanceState, node_id: str) -> str:
    return next(t.task_id for t in state.tokens if t.node_id == node_id and t.task_id)


CATCHES = process(
    [
        {"id": "s", "type": "start_event"},
        {"id": "wait", "type": "timer_catch_event", "timer": timer("PT5M")},
        {"id": "paid", "type": "message_catch_event",
         "message": {"name": "paid", "correlation_key": "=orderId"}},
        {"id": "e", "type": "end_event"},
    ],
    [("s", "wait"), ("wait", "paid"), ("paid", "e")],
)  # fmt: skip


def test_a_token_waits_at_a_timer_then_at_a_message_with_its_key() -> None:
    first = start(CATCHES, orderId=42)
    (started,) = of(first, StartTimer)
    assert started.node_id == "wait" and started.spec.kind == "duration"
    assert [w.kind for w in first.state.waits] == ["timer"]
    after_timer = timer_fired(CATCHES, first.state, started.wait_id)
    assert of(after_timer, CloseWait) == [CloseWait(started.wait_id, "timer")]
    (subscribed,) = of(after_timer, OpenSubscription)
    assert (subscribed.name, subscribed.correlation_key) == ("paid", "42")
    done = message_correlated(CATCHES, after_timer.state, subscribed.wait_id, {"amount": 3})
    assert ended(done) == "completed" and done.state.variables["amount"] == 3


BOUNDARIES = process(
    [
        {"id": "s", "type": "start_event"},
        {"id": "work", "type": "service_task", "topic": "work"},
        {"id": "late", "type": "timer_boundary_event", "attached_to": "work",
         "timer": timer("PT10M")},
        {"id": "remind", "type": "timer_boundary_event", "attached_to": "work",
         "timer": timer("R3/PT1M", "cycle"), "interrupting": False},
        {"id": "reminder", "type": "service_task", "topic": "remind"},
        {"id": "done", "type": "end_event"},
        {"id": "timed_out", "type": "end_event"},
        {"id": "reminded", "type": "end_event"},
    ],
    [("s", "work"), ("work", "done"), ("late", "timed_out"), ("remind", "reminder"),
     ("reminder", "reminded")],
)  # fmt: skip


def waits_by_node(state: InstanceState) -> dict[str, str]:
    return {w.node_id: w.id for w in state.waits}


def test_an_interrupting_boundary_timer_withdraws_the_task_and_closes_its_other_timers() -> None:
    first = start(BOUNDARIES)
    assert sorted(e.node_id for e in of(first, StartTimer)) == ["late", "remind"]
    waits = waits_by_node(first.state)
    fired = timer_fired(BOUNDARIES, first.state, waits["late"])
    assert [w.task_id for w in of(fired, WithdrawTask)] == [task_of(first.state, "work")]
    assert {c.wait_id for c in of(fired, CloseWait)} == {waits["late"], waits["remind"]}
    assert ended(fired) == "completed" and not fired.state.waits


def test_a_non_interrupting_cycle_runs_a_branch_per_turn_and_ends_with_the_task() -> None:
    state = start(BOUNDARIES).state
    remind = waits_by_node(state)["remind"]
    for turn in range(3):
        step = timer_fired(BOUNDARIES, state, remind, repeats=turn < 2)
        assert not of(step, WithdrawTask) and len(of(step, CreateTask)) == 1
        state = step.state
    assert "remind" not in waits_by_node(state)  # the last turn closed it
    done = complete_task(BOUNDARIES, state, task_of(state, "work"), {})
    assert {c.wait_id for c in of(done, CloseWait)} == {waits_by_node(state)["late"]}
    assert not done.state.waits
    assert len([t for t in done.state.tokens if t.node_id == "reminder"]) == 3


GATEWAY = process(
    [
        {"id": "s", "type": "start_event"},
        {"id": "which", "type": "event_based_gateway"},
        {"id": "answer", "type": "receive_task", "message": {"name": "answer"}},
        {"id": "too_late", "type": "timer_catch_event", "timer": timer("P1D")},
        {"id": "answered", "type": "end_event"},
        {"id": "gave_up", "type": "end_event"},
    ],
    [("s", "which"), ("which", "answer"), ("which", "too_late"), ("answer", "answered"),
     ("too_late", "gave_up")],
)  # fmt: skip


def test_the_first_event_after_an_event_based_gateway_wins_and_withdraws_the_other() -> None:
    first = start(GATEWAY)
    waits = waits_by_node(first.state)
    assert set(waits) == {"answer", "too_late"}
    (subscribed,) = of(first, OpenSubscription)
    assert subscribed.correlation_key is None  # the shell correlates by business key
    won = message_correlated(GATEWAY, first.state, waits["answer"], {"reply": "yes"})
    # Both waits end: the one that fired, and the one it won against.
    assert set(of(won, CloseWait)) == {
        CloseWait(waits["answer"], "message"),
        CloseWait(waits["too_late"], "timer"),
    }
    assert ended(won) == "completed" and won.state.variables == {"reply": "yes"}
    timed = timer_fired(GATEWAY, first.state, waits["too_late"])
    assert CloseWait(waits["answer"], "message") in of(timed, CloseWait)
    assert ended(timed) == "completed"


def test_a_timer_expression_that_is_no_timer_is_an_incident_on_its_element() -> None:
    proc = process(
        [
            {"id": "s", "type": "start_event"},
            {"id": "wait", "type": "timer_catch_event", "timer": timer("=delay")},
            {"id": "e", "type": "end_event"},
        ],
        [("s", "wait"), ("wait", "e")],
    )
    bad = start(proc, delay="soon")
    (incident,) = of(bad, RaiseIncident)
    assert incident.node_id == "wait" and not bad.state.waits
    good = start(proc, delay="PT1S")
    assert [e.spec.text for e in of(good, StartTimer)] == ["PT1S"]


def test_cancelling_closes_every_wait() -> None:
    state = start(BOUNDARIES).state
    cancelled = cancel_instance(state, "test")
    assert {c.wait_id for c in of(cancelled, CloseWait)} == {w.id for w in state.waits}


def test_a_message_boundary_on_a_subprocess_interrupts_everything_in_it() -> None:
    proc = process(
        [
            {"id": "s", "type": "start_event"},
            {"id": "sub", "type": "subprocess"},
            {"id": "in_s", "type": "start_event", "parent": "sub"},
            {"id": "inner", "type": "service_task", "topic": "inner", "parent": "sub"},
            {"id": "inner_wait", "type": "timer_catch_event", "timer": timer("PT1H"),
             "parent": "sub"},
            {"id": "fork", "type": "parallel_gateway", "parent": "sub"},
            {"id": "in_e", "type": "end_event", "parent": "sub"},
            {"id": "in_e2", "type": "end_event", "parent": "sub"},
            {"id": "stop", "type": "message_boundary_event", "attached_to": "sub",
             "message": {"name": "stop", "correlation_key": "=id"}},
            {"id": "e", "type": "end_event"},
            {"id": "stopped", "type": "end_event"},
        ],
        [("s", "sub"), ("in_s", "fork"), ("fork", "inner"), ("fork", "inner_wait"),
         ("inner", "in_e"), ("inner_wait", "in_e2"), ("sub", "e"), ("stop", "stopped")],
    )  # fmt: skip
    first = start(proc, id="k")
    waits = waits_by_node(first.state)
    stopped = message_correlated(proc, first.state, waits["stop"], {"why": "customer"})
    assert [w.task_id for w in of(stopped, WithdrawTask)] == [task_of(first.state, "inner")]
    assert {c.wait_id for c in of(stopped, CloseWait)} == set(waits.values())
    assert ended(stopped) == "completed" and stopped.state.variables["why"] == "customer"
