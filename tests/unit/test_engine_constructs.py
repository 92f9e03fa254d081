"""The pure core on each BPMN construct: gateways, scopes, loops, calls, errors."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.definitions.graph import Process
from orchestrator.definitions.loader import compile_definition
from orchestrator.engine.state import (
    CreateTask,
    InstanceEnded,
    InstanceState,
    NotifyParent,
    RaiseIncident,
    Record,
    StartChild,
    Transition,
    WithdrawTask,
)
from orchestrator.engine.step import (
    EngineStepError,
    cancel_instance,
    complete_task,
    error_task,
    set_variables,
    start_instance,
)


def process(nodes: list[dict[str, Any]], flows: list[tuple[str, str, str | None]]) -> Process:
    return compile_definition(
        {
            "key": "p",
            "nodes": nodes,
            "flows": [
                {"id": f"f{i}_{a}_{b}", "from": a, "to": b, **({"condition": c} if c else {})}
                for i, (a, b, c) in enumerate(flows)
            ],
        },
    )


def task(node_id: str, **extra: Any) -> dict[str, Any]:
    return {"id": node_id, "type": "service_task", "topic": node_id, **extra}


def node(node_id: str, kind: str, **extra: Any) -> dict[str, Any]:
    return {"id": node_id, "type": kind, **extra}


def created(transition: Transition) -> dict[str, CreateTask]:
    """Tasks created by the transition, by node id (the last one per node)."""
    return {e.node_id: e for e in transition.effects if isinstance(e, CreateTask)}


def all_created(transition: Transition) -> list[CreateTask]:
    return [e for e in transition.effects if isinstance(e, CreateTask)]


def kinds(transition: Transition) -> list[str]:
    return [e.kind for e in transition.effects if isinstance(e, Record)]


def ended(transition: Transition) -> str | None:
    return next((e.status for e in transition.effects if isinstance(e, InstanceEnded)), None)


def start(proc: Process, **variables: Any) -> Transition:
    return start_instance(proc, str(uuid.uuid4()), variables)


def open_tasks(state: InstanceState) -> dict[str, str]:
    """node id -> task id of every waiting token."""
    return {t.node_id: t.task_id for t in state.tokens if t.task_id is not None}


PARALLEL = process(
    [
        node("s", "start_event"),
        node("fork", "parallel_gateway"),
        task("a"),
        task("b"),
        node("join", "parallel_gateway"),
        task("c"),
        node("e", "end_event"),
    ],
    [
        ("s", "fork", None),
        ("fork", "a", None),
        ("fork", "b", None),
        ("a", "join", None),
        ("b", "join", None),
        ("join", "c", None),
        ("c", "e", None),
    ],
)


def test_parallel_fork_creates_both_tasks_and_the_join_fires_once() -> None:
    first = start(PARALLEL)
    assert set(created(first)) == {"a", "b"}
    tasks = open_tasks(first.state)
    after_a = complete_task(PARALLEL, first.state, tasks["a"], {"x": 1})
    assert created(after_a) == {} and "joined" not in kinds(after_a)
    after_b = complete_task(PARALLEL, after_a.state, tasks["b"], {"y": 2})
    assert set(created(after_b)) == {"c"} and kinds(after_b).count("joined") == 1
    assert after_b.state.variables == {"x": 1, "y": 2}
    assert len(after_b.state.tokens) == 1
    done = complete_task(PARALLEL, after_b.state, open_tasks(after_b.state)["c"], {})
    assert ended(done) == "completed"


INCLUSIVE = process(
    [
        node("s", "start_event"),
        node("fork", "inclusive_gateway", default="f3_fork_c"),
        task("a"),
        task("b"),
        task("c"),
        node("join", "inclusive_gateway"),
        node("e", "end_event"),
    ],
    [
        ("s", "fork", None),
        ("fork", "a", "x > 1"),
        ("fork", "b", "y > 1"),
        ("fork", "c", None),
        ("a", "join", None),
        ("b", "join", None),
        ("c", "join", None),
        ("join", "e", None),
    ],
)


def test_inclusive_fork_takes_every_true_flow_and_the_join_waits_for_them() -> None:
    first = start(INCLUSIVE, x=5, y=5)
    assert set(created(first)) == {"a", "b"}
    tasks = open_tasks(first.state)
    after_a = complete_task(INCLUSIVE, first.state, tasks["a"], {})
    assert ended(after_a) is None
    after_b = complete_task(INCLUSIVE, after_a.state, tasks["b"], {})
    assert ended(after_b) == "completed"


def test_inclusive_fork_falls_back_to_its_default_and_a_lone_token_passes_the_join() -> None:
    first = start(INCLUSIVE, x=0, y=0)
    assert set(created(first)) == {"c"}
    done = complete_task(INCLUSIVE, first.state, open_tasks(first.state)["c"], {})
    assert ended(done) == "completed"


SUBPROCESS = process(
    [
        node("s", "start_event"),
        node("sub", "subprocess", inputs=[{"target": "local", "source": "=1"}]),
        node("sub_s", "start_event", parent="sub"),
        node("sub_fork", "parallel_gateway", parent="sub"),
        task("inner_a", parent="sub"),
        task("inner_b", parent="sub"),
        node("sub_join", "parallel_gateway", parent="sub"),
        node("sub_e", "end_event", parent="sub"),
        node(
            "caught",
            "error_boundary_event",
            attached_to="sub",
            error_code="BAD",
            code_variable="code",
        ),
        node("e_ok", "end_event"),
        node("e_bad", "end_event"),
    ],
    [
        ("s", "sub", None),
        ("sub_s", "sub_fork", None),
        ("sub_fork", "inner_a", None),
        ("sub_fork", "inner_b", None),
        ("inner_a", "sub_join", None),
        ("inner_b", "sub_join", None),
        ("sub_join", "sub_e", None),
        ("sub", "e_ok", None),
        ("caught", "e_bad", None),
    ],
)


def test_subprocess_has_its_own_scope_and_completes_when_its_tokens_end() -> None:
    first = start(SUBPROCESS, outer=1)
    assert set(created(first)) == {"inner_a", "inner_b"}
    assert created(first)["inner_a"].variables == {"outer": 1, "local": 1}
    tasks = open_tasks(first.state)
    mid = complete_task(SUBPROCESS, first.state, tasks["inner_a"], {"result": "a"})
    done = complete_task(SUBPROCESS, mid.state, tasks["inner_b"], {"local": 9})
    assert ended(done) == "completed"
    # A result reaches the process unless the subprocess holds that variable locally.
    assert done.state.variables == {"outer": 1, "result": "a"}


def test_a_task_error_is_caught_on_the_enclosing_subprocess_and_withdraws_its_sibling() -> None:
    first = start(SUBPROCESS)
    tasks = open_tasks(first.state)
    caught = error_task(SUBPROCESS, first.state, tasks["inner_a"], "BAD", "no", {})
    assert caught is not None
    withdrawn = [e.task_id for e in caught.effects if isinstance(e, WithdrawTask)]
    assert withdrawn == [tasks["inner_b"]]
    assert ended(caught) == "completed" and caught.state.variables == {"code": "BAD"}
    assert error_task(SUBPROCESS, first.state, tasks["inner_a"], "OTHER", None, {}) is None


ERROR_END = process(
    [
        node("s", "start_event"),
        node("sub", "subprocess"),
        node("sub_s", "start_event", parent="sub"),
        node("throw", "error_end_event", parent="sub", error_code="E1"),
        node("catch", "error_boundary_event", attached_to="sub"),
        task("handle"),
        node("e", "end_event"),
        node("e2", "end_event"),
    ],
    [
        ("s", "sub", None),
        ("sub_s", "throw", None),
        ("sub", "e", None),
        ("catch", "handle", None),
        ("handle", "e2", None),
    ],
)


def test_an_error_end_event_is_caught_by_a_catch_all_boundary_of_its_subprocess() -> None:
    first = start(ERROR_END)
    assert set(created(first)) == {"handle"} and "error_caught" in kinds(first)
    assert not first.state.scopes


def test_an_uncaught_error_end_event_is_an_incident() -> None:
    lone = process(
        [node("s", "start_event"), node("throw", "error_end_event", error_code="E1")],
        [("s", "throw", None)],
    )
    first = start(lone)
    incidents = [e for e in first.effects if isinstance(e, RaiseIncident)]
    assert incidents and incidents[0].node_id == "throw" and ended(first) is None


def loop_process(**loop: Any) -> Process:
    return process(
        [
            node("s", "start_event"),
            task("each", multi_instance=loop),
            node("e", "end_event"),
        ],
        [("s", "each", None), ("each", "e", None)],
    )


def test_parallel_multi_instance_gathers_outputs_in_element_order() -> None:
    proc = loop_process(
        collection="=items",
        element_variable="item",
        output_collection="results",
        output_element="=done",
    )
    first = start(proc, items=["a", "b", "c"])
    made = all_created(first)
    assert [t.variables["item"] for t in made] == ["a", "b", "c"]
    assert [t.variables["loopCounter"] for t in made] == [1, 2, 3]
    state = first.state
    for made_task in reversed(made):  # finish in reverse: the order still follows the items
        step = complete_task(proc, state, made_task.task_id, {"done": made_task.variables["item"]})
        state = step.state
    assert ended(step) == "completed"
    assert state.variables["results"] == ["a", "b", "c"]


def test_sequential_multi_instance_runs_one_element_at_a_time() -> None:
    proc = loop_process(sequential=True, cardinality="=3")
    step = start(proc)
    seen = []
    while ended(step) is None:
        made = all_created(step)
        assert len(made) == 1
        seen.append(made[0].variables["loopCounter"])
        step = complete_task(proc, step.state, made[0].task_id, {})
    assert seen == [1, 2, 3]


def test_a_completion_condition_ends_the_loop_early_and_withdraws_the_rest() -> None:
    proc = loop_process(cardinality="=4", completion_condition="=nrOfCompletedInstances >= 2")
    first = start(proc)
    made = all_created(first)
    mid = complete_task(proc, first.state, made[0].task_id, {})
    done = complete_task(proc, mid.state, made[1].task_id, {})
    withdrawn = {e.task_id for e in done.effects if isinstance(e, WithdrawTask)}
    assert withdrawn == {made[2].task_id, made[3].task_id}
    assert ended(done) == "completed"


def test_an_empty_collection_skips_the_activity() -> None:
    proc = loop_process(collection="=items", output_collection="out", output_element="=x")
    first = start(proc, items=[])
    assert ended(first) == "completed" and first.state.variables["out"] == []


CALLER = process(
    [
        node("s", "start_event"),
        node(
            "call",
            "call_activity",
            called_element="child",
            inputs=[{"target": "amount", "source": "=amount"}],
            outputs=[{"target": "answer", "source": "=result"}],
        ),
        node("caught", "error_boundary_event", attached_to="call", error_code="NO"),
        node("e", "end_event"),
        node("e2", "end_event"),
    ],
    [("s", "call", None), ("call", "e", None), ("caught", "e2", None)],
)


def test_a_call_activity_starts_its_child_and_maps_variables_both_ways() -> None:
    first = start(CALLER, amount=5, secret=1)
    child = next(e for e in first.effects if isinstance(e, StartChild))
    assert child.process_key == "child" and child.variables == {"amount": 5}
    assert child.called_by.catches == ("NO",)
    assert created(first)["call"].call
    done = complete_task(CALLER, first.state, child.instance_id, {"result": 42, "noise": 1})
    assert ended(done) == "completed"
    assert done.state.variables == {"amount": 5, "secret": 1, "answer": 42}


def test_a_called_instance_notifies_its_caller_and_throws_errors_it_catches() -> None:
    child = process(
        [
            node("s", "start_event"),
            node("x", "exclusive_gateway", default="f2_x_ok"),
            node("boom", "error_end_event", error_code="NO"),
            node("ok", "end_event"),
        ],
        [("s", "x", None), ("x", "boom", "fail == true"), ("x", "ok", None)],
    )
    first = start(CALLER, amount=1)
    # The caller's catches come in through StartChild.called_by.
    called_by = next(e for e in first.effects if isinstance(e, StartChild)).called_by
    assert called_by.catches == ("NO",)
    fine = start_instance(child, str(uuid.uuid4()), {"result": 7}, called_by)
    notify = next(e for e in fine.effects if isinstance(e, NotifyParent))
    assert notify.error_code is None and notify.variables == {"result": 7}
    failed = start_instance(child, str(uuid.uuid4()), {"fail": True}, called_by)
    notify = next(e for e in failed.effects if isinstance(e, NotifyParent))
    assert notify.error_code == "NO" and ended(failed) == "cancelled"


def test_a_terminate_end_event_withdraws_every_other_token() -> None:
    proc = process(
        [
            node("s", "start_event"),
            node("fork", "parallel_gateway"),
            task("slow"),
            node("stop", "terminate_end_event"),
            node("e", "end_event"),
        ],
        [("s", "fork", None), ("fork", "slow", None), ("fork", "stop", None), ("slow", "e", None)],
    )
    first = start(proc)
    assert ended(first) == "completed"
    assert [e for e in first.effects if isinstance(e, WithdrawTask)]


def test_user_tasks_carry_their_assignment_and_never_expire_by_default() -> None:
    proc = process(
        [
            node("s", "start_event"),
            node(
                "approve",
                "user_task",
                assignee="ann",
                candidate_groups=["managers"],
                form_key="approve-form",
                headers={"priority": "high"},
            ),
            node("e", "end_event"),
        ],
        [("s", "approve", None), ("approve", "e", None)],
    )
    made = created(start(proc))["approve"]
    assert made.topic == "user-task"
    assert made.message_fields == {
        "user_task": {
            "assignee": "ann",
            "candidate_groups": ["managers"],
            "form_key": "approve-form",
        },
        "headers": {"priority": "high"},
    }
    assert made.lock_ms > 86_400_000


def test_a_message_sent_again_carries_the_variables_of_its_task_scope() -> None:
    from orchestrator.store.unit_of_work import state_to_row, variables_for_task

    first = start(SUBPROCESS, outer=1, secret=2)
    _, _, variables, tokens, _, scopes = state_to_row(first.state)
    record = {"variables": variables, "tokens": tokens, "scopes": scopes}
    inner = open_tasks(first.state)["inner_a"]
    assert variables_for_task(record, inner) == {"outer": 1, "secret": 2, "local": 1}
    assert variables_for_task(record, inner, ("local", "missing")) == {"local": 1}
    flat = start(PARALLEL, x=1)
    _, _, variables, tokens, _, scopes = state_to_row(flat.state)
    assert scopes is None  # a flat process stores no scopes at all
    flat_record = {"variables": variables, "tokens": tokens, "scopes": scopes}
    assert variables_for_task(flat_record, open_tasks(flat.state)["a"]) == {"x": 1}


def test_an_operator_sets_variables_in_the_process_or_locally_in_a_scope() -> None:
    first = start(SUBPROCESS, outer=1)
    sub = next(s for s in first.state.scopes if s.node_id == "sub")
    in_process = set_variables(first.state, None, {"outer": 2, "fixed": True})
    assert in_process.state.variables == {"outer": 2, "fixed": True}
    assert in_process.state.tokens == first.state.tokens  # nothing moves
    assert [(r.kind, r.node_id, r.detail) for r in in_process.effects if isinstance(r, Record)] == [
        ("variables_set", None, {"names": ["fixed", "outer"]})
    ]
    local = set_variables(in_process.state, sub.id, {"local": 7})
    assert next(s for s in local.state.scopes if s.id == sub.id).variables == {"local": 7}
    assert local.state.variables == in_process.state.variables
    assert first.state.variables == {"outer": 1}  # the old state is left as it was
    # The process-scope values last to the end; the local one stays in its scope.
    tasks = open_tasks(local.state)
    mid = complete_task(SUBPROCESS, local.state, tasks["inner_a"], {})
    done = complete_task(SUBPROCESS, mid.state, tasks["inner_b"], {"local": 9})
    assert done.state.variables == {"outer": 2, "fixed": True}
    with pytest.raises(EngineStepError, match="no scope"):
        set_variables(first.state, "nope", {"x": 1})
    cancelled = cancel_instance(first.state, None).state
    with pytest.raises(EngineStepError, match="not active"):
        set_variables(cancelled, None, {"x": 1})


def test_a_scope_closed_by_an_error_after_one_of_its_tokens_ended_ends_once() -> None:
    proc = process(
        [
            node("s", "start_event"),
            node("sub", "subprocess"),
            node("sub_s", "start_event", parent="sub"),
            node("fork", "parallel_gateway", parent="sub"),
            node("done", "end_event", parent="sub"),
            node("boom", "error_end_event", parent="sub", error_code="E"),
            node("caught", "error_boundary_event", attached_to="sub"),
            node("e", "end_event"),
            node("e_caught", "end_event"),
        ],
        [("s", "sub", None), ("sub_s", "fork", None), ("fork", "done", None),
         ("fork", "boom", None), ("sub", "e", None), ("caught", "e_caught", None)],
    )  # fmt: skip
    first = start(proc)
    assert ended(first) == "completed"
    assert kinds(first).count("error_caught") == 1
    assert "subprocess_ended" not in kinds(first)


NESTED = process(
    [
        node("s", "start_event"),
        node("fork", "parallel_gateway"),
        task("each", multi_instance={"collection": "=items", "element_variable": "item",
                                     "output_collection": "outs", "output_element": "=out"}),
        node("sub", "subprocess"),
        node("sub_s", "start_event", parent="sub"),
        node("sub_fork", "inclusive_gateway", parent="sub", default="f6_sub_fork_c"),
        task("a", parent="sub"),
        task("b", parent="sub"),
        task("c", parent="sub"),
        node("sub_join", "inclusive_gateway", parent="sub"),
        node("sub_e", "end_event", parent="sub"),
        node("join", "parallel_gateway"),
        task("after"),
        node("e", "end_event"),
    ],
    [("s", "fork", None), ("fork", "each", None), ("fork", "sub", None),
     ("sub_s", "sub_fork", None), ("sub_fork", "a", "wants_a == true"),
     ("sub_fork", "b", "wants_b == true"), ("sub_fork", "c", None), ("a", "sub_join", None),
     ("b", "sub_join", None), ("c", "sub_join", None), ("sub_join", "sub_e", None),
     ("each", "join", None), ("sub", "join", None), ("join", "after", None),
     ("after", "e", None)],
)  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(
    items=st.lists(st.integers(-5, 5), max_size=5),
    wants_a=st.booleans(),
    wants_b=st.booleans(),
    order=st.randoms(use_true_random=False),
)
def test_any_completion_order_joins_once_and_keeps_loop_outputs_in_order(
    items: list[int], wants_a: bool, wants_b: bool, order: Any
) -> None:
    """Whatever order the open tasks finish in, every join fires once, the loop's outputs
    follow its items, and the instance ends after exactly one `after` task."""
    step = start(NESTED, items=items, wants_a=wants_a, wants_b=wants_b)
    state, made = step.state, all_created(step)
    for _ in range(100):
        waiting = [t for t in state.tokens if t.task_id is not None]
        if not waiting:
            break
        token = order.choice(waiting)
        node_id = token.node_id
        item = next(t.variables.get("item") for t in made if t.task_id == token.task_id)
        step = complete_task(NESTED, state, token.task_id, {"out": item, f"did_{node_id}": 1})
        state, made = step.state, made + all_created(step)
    assert state.status == "completed"
    assert [t.node_id for t in made].count("after") == 1
    assert state.variables["outs"] == items
    branches = {t.node_id for t in made} & {"a", "b", "c"}
    expected = {n for n, on in (("a", wants_a), ("b", wants_b)) if on} or {"c"}
    assert branches == expected
    assert not state.scopes


def test_the_instance_view_shows_tokens_per_scope_and_loop_progress() -> None:
    from orchestrator.daemon.admin import describe_scopes
    from orchestrator.store.unit_of_work import state_to_row

    proc = loop_process(collection="=items", element_variable="item")
    first = start(proc, items=["x", "y"])
    mid = complete_task(proc, first.state, all_created(first)[0].task_id, {})
    _, _, _, tokens, _, scopes = state_to_row(mid.state)
    view = describe_scopes(tokens, scopes)
    assert [entry["kind"] for entry in view] == ["process", "mi_body", "mi_element"]
    body, element = view[1], view[2]
    assert body["loop"] == {"elements": 2, "started": 2, "completed": 1}
    assert element["element"] == 1 and element["variables"]["item"] == "y"
    assert [t["node_id"] for t in element["tokens"]] == ["each"]
    assert view[0]["tokens"] == [] and body["tokens"] == []
