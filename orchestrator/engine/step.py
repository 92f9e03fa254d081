"""Pure state transitions: (instance state, event) -> (new state, effects). No I/O, no clock."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from orchestrator.definitions.graph import Process
from orchestrator.engine import activities, events, walk
from orchestrator.engine.run import Run
from orchestrator.engine.state import (
    CalledBy,
    CloseWait,
    Effect,
    InstanceEnded,
    InstanceState,
    Record,
    StartChild,
    Token,
    Transition,
)
from orchestrator.model.definition import CallActivity

__all__ = [
    "EngineStepError",
    "cancel_instance",
    "complete_task",
    "error_task",
    "message_correlated",
    "restart_call",
    "set_variables",
    "start_instance",
    "timer_fired",
]


class EngineStepError(Exception):
    """An event does not fit the instance's state (a bug or a stale event, never user input)."""


def start_instance(
    process: Process,
    instance_id: str,
    variables: dict[str, Any],
    called_by: CalledBy | None = None,
    start_id: str | None = None,
) -> Transition:
    """A new instance, from its none start event (or `start_id`: the timer or message start
    event that fired)."""
    start_id = start_id or process.start_id
    state = InstanceState(instance_id, "active", dict(variables), (), 1, called_by=called_by)
    run = Run.of(process, state)
    run.record("instance_started", start_id)
    events.open_event_subprocesses(run, None, None)
    token = run.place(Token(state.derive_id(0), start_id))
    run.send(token, start_id, None)
    walk.drain(run)
    return run.finish()


def complete_task(
    process: Process, state: InstanceState, task_id: str, variables: dict[str, Any]
) -> Transition:
    """A task (or a call activity's child instance) completed with `variables`."""
    token = _waiting(state, task_id)
    run = Run.of(process, state)
    run.effects.append(Record("task_completed", token.node_id, task_id))
    node = process.nodes[token.node_id]
    assert isinstance(node, activities.Activity)
    if isinstance(node, CallActivity) and not node.propagate_all_out:
        # Only the output mappings read a child's variables: none reach this scope alone.
        activities.done(run, token, node, variables, propagate=False)
    else:
        activities.done(run, token, node, variables)
    walk.drain(run)
    return run.finish()


def error_task(
    process: Process,
    state: InstanceState,
    task_id: str,
    code: str,
    message: str | None,
    variables: dict[str, Any],
) -> Transition | None:
    """A business error of a waiting task (or of a call activity's child): leave through the
    nearest error boundary event that catches `code`. None when nothing catches it (the
    caller raises an incident)."""
    token = _waiting(state, task_id)
    run = Run.of(process, state)
    run.drop(token)
    if not walk.throw(run, token.scope, token.node_id, code, message, variables):
        return None
    run.effects.insert(0, Record("task_error", token.node_id, task_id, {"code": code}))
    walk.drain(run)
    return run.finish()


def timer_fired(
    process: Process, state: InstanceState, wait_id: str, *, repeats: bool = False
) -> Transition:
    """The timer `wait_id` is due. `repeats`: the shell keeps it for another turn of its
    cycle (a non-interrupting boundary event fires again; any other wait ends anyway)."""
    return _fire(process, state, wait_id, {}, repeats=repeats)


def message_correlated(
    process: Process, state: InstanceState, wait_id: str, variables: dict[str, Any]
) -> Transition:
    """A message was correlated to the subscription `wait_id`; its variables come along."""
    return _fire(process, state, wait_id, variables, repeats=False)


def _fire(
    process: Process, state: InstanceState, wait_id: str, values: dict[str, Any], *, repeats: bool
) -> Transition:
    wait = next((w for w in state.waits if w.id == wait_id), None)
    if state.status != "active" or wait is None:
        raise EngineStepError(f"nothing in instance {state.id} waits on {wait_id}")
    run = Run.of(process, state)
    events.fired(run, wait, values, repeats=repeats)
    walk.drain(run)
    return run.finish()


def restart_call(process: Process, state: InstanceState, task_id: str) -> StartChild:
    """The start of the child a call activity waits for, again (its first start failed:
    the called process was not deployed; an operator retries the call's task)."""
    token = _waiting(state, task_id)
    node = process.nodes[token.node_id]
    if not isinstance(node, CallActivity):
        raise EngineStepError(f"task {task_id} is not a call activity's")
    return activities.child_start(Run.of(process, state), token, node)


def cancel_instance(state: InstanceState, reason: str | None) -> Transition:
    """End the instance where it stands. The shell withdraws its open tasks, and cancels the
    child instance of each call activity's task (topic activities.CALL_TOPIC) with them."""
    if state.status != "active":
        raise EngineStepError(f"instance {state.id} is {state.status}, not active")
    effects: tuple[Effect, ...] = (
        Record("instance_cancelled", detail={"reason": reason} if reason else {}),
        InstanceEnded("cancelled"),
        *(CloseWait(wait.id, wait.kind) for wait in state.waits),
    )
    ended = InstanceState(
        state.id, "cancelled", state.variables, (), state.seq, state.version, (), state.called_by
    )
    return Transition(ended, effects)


def set_variables(
    state: InstanceState, scope_id: str | None, values: Mapping[str, Any]
) -> Transition:
    """An operator sets variables of an active instance: in the process scope (`scope_id`
    None) or, locally, in one of its scopes (Camunda's setVariablesLocal). Nothing moves:
    the next condition, mapping or task sees the new values; tasks already sent keep theirs."""
    if state.status != "active":
        raise EngineStepError(f"instance {state.id} is {state.status}, not active")
    detail: dict[str, Any] = {"names": sorted(values)}
    node_id: str | None = None
    if scope_id is None:
        changed = replace(state, variables={**state.variables, **values})
    else:
        scope = next((s for s in state.scopes if s.id == scope_id), None)
        if scope is None:
            raise EngineStepError(f"instance {state.id} has no scope {scope_id}")
        node_id, detail["scope"] = scope.node_id, scope_id
        updated = replace(scope, variables={**scope.variables, **values})
        changed = replace(
            state, scopes=tuple(updated if s.id == scope_id else s for s in state.scopes)
        )
    return Transition(changed, (Record("variables_set", node_id=node_id, detail=detail),))


def _waiting(state: InstanceState, task_id: str) -> Token:
    token = state.token_for_task(task_id)
    if state.status != "active" or token is None:
        raise EngineStepError(f"task {task_id} is not waiting in instance {state.id}")
    return token
