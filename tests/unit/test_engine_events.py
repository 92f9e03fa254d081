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
    Record,
    StartTimer,
    Transition,
    WithdrawTask,
)
from orchestrator.engine.step import (
    cancel_instance,
    complete_task,
    error_task,
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


def with_event_subprocess(start: dict[str, Any]) -> Process:
    return process(
        [
            {"id": "s", "type": "start_event"},
            {"id": "work", "type": "service_task", "topic": "work"},
            {"id": "e", "type": "end_event"},
            {"id": "on_event", "type": "subprocess", "triggered_by_event": True},
            {"id": "es_start", "type": "start_event", "parent": "on_event", **start},
            {"id": "handle", "type": "service_task", "topic": "handle", "parent": "on_event"},
            {"id": "es_end", "type": "end_event", "parent": "on_event"},
        ],
        [("s", "work"), ("work", "e"), ("es_start", "handle"), ("handle", "es_end")],
    )


def test_an_interrupting_timer_event_subprocess_ends_the_process_work_and_runs() -> None:
    proc = with_event_subprocess({"timer": timer("PT1H")})
    first = start(proc)
    (started,) = of(first, StartTimer)
    assert started.node_id == "es_start"
    fired = timer_fired(proc, first.state, started.wait_id)
    assert [w.task_id for w in of(fired, WithdrawTask)] == [task_of(first.state, "work")]
    assert [t.node_id for t in of(fired, CreateTask)] == ["handle"]
    done = complete_task(proc, fired.state, task_of(fired.state, "handle"), {})
    assert ended(done) == "completed"


def test_a_non_interrupting_message_event_subprocess_runs_beside_and_keeps_listening() -> None:
    proc = with_event_subprocess(
        {"message": {"name": "ping", "correlation_key": "=id"}, "interrupting": False}
    )
    first = start(proc, id="k")
    (subscribed,) = of(first, OpenSubscription)
    state = first.state
    for _ in range(2):
        step = message_correlated(proc, state, subscribed.wait_id, {"n": 1})
        assert not of(step, WithdrawTask) and not of(step, CloseWait)
        state = step.state
    handles = [t for t in state.tokens if t.node_id == "handle"]
    assert len(handles) == 2 and task_of(state, "work")
    state = complete_task(proc, state, task_of(state, "work"), {}).state
    for token in handles:
        step = complete_task(proc, state, token.task_id or "", {})
        state = step.state
    # The process ends when its last event subprocess has: its subscription closes then.
    assert ended(step) == "completed" and of(step, CloseWait)


def test_an_error_event_subprocess_in_a_subprocess_catches_before_its_boundary() -> None:
    proc = process(
        [
            {"id": "s", "type": "start_event"},
            {"id": "sub", "type": "subprocess"},
            {"id": "in_s", "type": "start_event", "parent": "sub"},
            {"id": "inner", "type": "service_task", "topic": "inner", "parent": "sub"},
            {"id": "in_e", "type": "end_event", "parent": "sub"},
            {"id": "on_error", "type": "subprocess", "parent": "sub", "triggered_by_event": True},
            {"id": "err_s", "type": "start_event", "parent": "on_error", "error": True,
             "error_code": "E"},
            {"id": "err_e", "type": "end_event", "parent": "on_error"},
            {"id": "boundary", "type": "error_boundary_event", "attached_to": "sub"},
            {"id": "e", "type": "end_event"},
            {"id": "e_boundary", "type": "end_event"},
        ],
        [("s", "sub"), ("in_s", "inner"), ("inner", "in_e"), ("err_s", "err_e"), ("sub", "e"),
         ("boundary", "e_boundary")],
    )  # fmt: skip
    first = start(proc)
    caught = error_task(proc, first.state, task_of(first.state, "inner"), "E", None, {})
    assert caught is not None and ended(caught) == "completed"
    history = [(r.kind, r.node_id) for r in of(caught, Record)]
    assert ("error_caught", "err_s") in history and ("end_event", "e") in history
    other = error_task(proc, first.state, task_of(first.state, "inner"), "OTHER", None, {})
    assert other is not None
    assert ("end_event", "e_boundary") in [(r.kind, r.node_id) for r in of(other, Record)]
