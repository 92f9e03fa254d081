"""Pure state transitions: (instance state, event) -> (new state, effects). No I/O, no clock."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from orchestrator.definitions.expressions import evaluate_condition
from orchestrator.definitions.loader import Process
from orchestrator.engine.state import (
    CreateTask,
    Effect,
    InstanceEnded,
    InstanceState,
    RaiseIncident,
    Record,
    Token,
    Transition,
)
from orchestrator.model.definition import EndEvent, ExclusiveGateway, ServiceTask, StartEvent

#: A graph walk that visits more nodes than this without waiting is a loop of gateways.
MAX_STEPS_PER_WALK = 10_000


class EngineStepError(Exception):
    """An event does not fit the instance's state (a bug or a stale event, never user input)."""


def start_instance(process: Process, instance_id: str, variables: dict[str, Any]) -> Transition:
    state = InstanceState(instance_id, "active", dict(variables), (), 0)
    token = Token(state.derive_id(0), process.start_id)
    state = replace(state, tokens=(token,), seq=1)
    effects: list[Effect] = [Record("instance_started", process.start_id)]
    state = _walk_from(process, state, token, effects)
    return Transition(state, tuple(effects))


def complete_task(
    process: Process, state: InstanceState, task_id: str, variables: dict[str, Any]
) -> Transition:
    token = state.token_for_task(task_id)
    if state.status != "active" or token is None:
        raise EngineStepError(f"task {task_id} is not waiting in instance {state.id}")
    effects: list[Effect] = [Record("task_completed", token.node_id, task_id)]
    state = replace(state, variables={**state.variables, **variables})
    state = _walk_from(process, state, token, effects)
    return Transition(state, tuple(effects))


def error_task(
    process: Process,
    state: InstanceState,
    task_id: str,
    code: str,
    message: str | None,
    variables: dict[str, Any],
) -> Transition | None:
    """A business error of a waiting task: leave through the error boundary event that
    catches `code`. None when no boundary event catches it (the caller raises an incident)."""
    token = state.token_for_task(task_id)
    if state.status != "active" or token is None:
        raise EngineStepError(f"task {task_id} is not waiting in instance {state.id}")
    boundary = process.catching_boundary(token.node_id, code)
    if boundary is None:
        return None
    caught = dict(variables)
    if boundary.code_variable:
        caught[boundary.code_variable] = code
    if boundary.message_variable:
        caught[boundary.message_variable] = message
    effects: list[Effect] = [
        Record("error_caught", boundary.id, task_id, {"code": code, "task": token.node_id})
    ]
    moved = Token(token.id, boundary.id)
    state = replace(
        state, variables={**state.variables, **caught}, tokens=_swap(state.tokens, token, moved)
    )
    state = _walk_from(process, state, moved, effects)
    return Transition(state, tuple(effects))


def cancel_instance(state: InstanceState, reason: str | None) -> Transition:
    """End the instance where it stands; the shell withdraws its open tasks."""
    if state.status != "active":
        raise EngineStepError(f"instance {state.id} is {state.status}, not active")
    effects: list[Effect] = [
        Record("instance_cancelled", detail={"reason": reason} if reason else {}),
        InstanceEnded("cancelled"),
    ]
    return Transition(replace(state, status="cancelled", tokens=()), tuple(effects))


def _walk_from(
    process: Process, state: InstanceState, token: Token, effects: list[Effect]
) -> InstanceState:
    """Move `token` out of its node and on until it waits, ends, or hits an incident."""
    node_id = token.node_id
    for step in range(MAX_STEPS_PER_WALK):
        if step > 0 or isinstance(process.nodes[node_id], StartEvent):
            waiting = _enter(process, state, token, node_id, effects)
            if waiting is not None:
                return waiting
        next_id = _leave(process, state, node_id, effects)
        if next_id is None:
            return _park(state, token, node_id)
        node_id = next_id
    effects.append(RaiseIncident(node_id, "the process loops without reaching a task"))
    return _park(state, token, node_id)


def _enter(
    process: Process, state: InstanceState, token: Token, node_id: str, effects: list[Effect]
) -> InstanceState | None:
    """Arrive at a node: return the new state if the token stops here, None to move on."""
    node = process.nodes[node_id]
    if isinstance(node, ServiceTask):
        task_id = state.derive_id(state.seq)
        moved = Token(token.id, node_id, task_id)
        effects.append(
            CreateTask(task_id, node_id, node.topic, node.lock_ms, node.retry.max_attempts)
        )
        effects.append(Record("task_created", node_id, task_id, {"topic": node.topic}))
        return replace(state, tokens=_swap(state.tokens, token, moved), seq=state.seq + 1)
    if isinstance(node, EndEvent):
        effects.append(Record("end_event", node_id))
        tokens = tuple(t for t in state.tokens if t.id != token.id)
        if tokens:
            return replace(state, tokens=tokens)
        effects.append(InstanceEnded("completed"))
        return replace(state, tokens=(), status="completed")
    return None


def _leave(
    process: Process, state: InstanceState, node_id: str, effects: list[Effect]
) -> str | None:
    """The node the token goes to next, or None (with an incident) when no flow applies."""
    node = process.nodes[node_id]
    flows = process.outgoing.get(node_id, ())
    if not isinstance(node, ExclusiveGateway):
        return flows[0].target
    for flow in flows:
        condition = process.conditions.get(flow.id)
        if condition is not None and evaluate_condition(condition, state.variables):
            effects.append(Record("flow_taken", node_id, detail={"flow": flow.id}))
            return flow.target
    default = next((flow for flow in flows if flow.id == node.default), None)
    if default is None and len(flows) == 1 and flows[0].condition is None:
        default = flows[0]
    if default is not None:
        effects.append(Record("flow_taken", node_id, detail={"flow": default.id}))
        return default.target
    effects.append(RaiseIncident(node_id, f"no outgoing flow of gateway '{node_id}' applies"))
    return None


def _park(state: InstanceState, token: Token, node_id: str) -> InstanceState:
    """Leave the token at `node_id` (an incident holds it there)."""
    return replace(state, tokens=_swap(state.tokens, token, Token(token.id, node_id)))


def _swap(tokens: tuple[Token, ...], old: Token, new: Token) -> tuple[Token, ...]:
    return tuple(new if t.id == old.id else t for t in tokens)
