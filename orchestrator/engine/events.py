"""Waiting for the world on a Run: timers and messages.

A token at a timer or message catch event, a receive task or an event-based gateway waits
on one wait per event; an activity with timer or message boundary events has one wait per
boundary event, owned by its token (a task, a call, a receive task) or its scope (a
subprocess, a loop body), so they end with it. The shell keeps the timers and
subscriptions (StartTimer, OpenSubscription, CloseWait) and reports a firing back through
step.timer_fired and step.message_correlated, which land in `fired`.
"""

from __future__ import annotations

from typing import Any

from orchestrator.definitions.timers import TimerError, is_expression, parse_timer
from orchestrator.engine import activities, walk
from orchestrator.engine.run import Run
from orchestrator.engine.state import (
    OpenSubscription,
    RaiseIncident,
    StartTimer,
    Token,
    Wait,
)
from orchestrator.model.definition import (
    EventBasedGateway,
    MessageBoundaryEvent,
    MessageCatchEvent,
    MessageDefinition,
    Node,
    ReceiveTask,
    StartEvent,
    TimerBoundaryEvent,
    TimerCatchEvent,
    TimerDefinition,
)

WaitingEvent = TimerCatchEvent | MessageCatchEvent | ReceiveTask
Boundary = TimerBoundaryEvent | MessageBoundaryEvent


def catch(run: Run, token: Token, node: TimerCatchEvent | MessageCatchEvent) -> None:
    """A token reaches a catch event: it waits there."""
    run.place(Token(token.id, node.id, scope=token.scope))
    if not _open(run, node, token.id, token.scope):
        _hold(run, token, node)


def receive(run: Run, token: Token, node: ReceiveTask) -> None:
    """A receive task waits for its message (its boundary events are already open)."""
    if not _open(run, node, token.id, token.scope):
        _hold(run, token, node)


def gateway(run: Run, token: Token, node: EventBasedGateway) -> None:
    """Wait at the gateway for the first of the events its flows lead to."""
    run.place(Token(token.id, node.id, scope=token.scope))
    for flow in run.process.outgoing.get(node.id, ()):
        target = run.process.nodes[flow.target]
        assert isinstance(target, TimerCatchEvent | MessageCatchEvent | ReceiveTask)
        if not _open(run, target, token.id, token.scope):
            run.close_waits_of(token.id)
            _hold(run, token, node)
            return


def open_boundaries(run: Run, host_id: str, owner: str, scope: str | None) -> None:
    """An activity starts: open a wait for each timer and message boundary event on it."""
    for event in run.process.event_boundaries.get(host_id, ()):
        if not _open(run, event, owner, scope):
            return


def open_event_subprocesses(run: Run, container: str | None, scope: str | None) -> None:
    """A scope starts (the process, container None, or a subprocess): open the timer and
    message waits of the event subprocesses in it, owned by the scope (the process: by the
    instance's id)."""
    owner = scope if scope is not None else run.id
    for sub in run.process.event_subprocesses.get(container, ()):
        start = run.process.nodes[run.process.starts[sub.id]]
        if isinstance(start, StartEvent) and (start.timer or start.message):
            _open(run, start, owner, scope)


def start_event_subprocess(
    run: Run, start: StartEvent, scope: str | None, values: dict[str, Any]
) -> None:
    """Run the event subprocess of `start` inside `scope`; an interrupting one first ends
    everything else there (and the other event subprocesses' waits)."""
    sub = run.process.nodes[start.parent or ""]
    if start.interrupting:
        run.cut(scope)
        run.close_waits_of(scope if scope is not None else run.id)
    inner = run.open_scope("subprocess", sub.id, scope)
    run.record("event_subprocess_started", sub.id, interrupting=start.interrupting)
    if values:
        run.assign(inner.id, values)
    open_event_subprocesses(run, sub.id, inner.id)
    walk.leave(run, run.place(Token(run.new_id(), start.id, scope=inner.id)))


def _open(run: Run, node: Node, owner: str, scope: str | None) -> bool:
    """Open the wait of `node` (an event with a timer or a message). False, with an incident
    raised, when its definition cannot be used (a timer expression that is no timer)."""
    definition = getattr(node, "timer", None) or getattr(node, "message", None)
    if isinstance(definition, TimerDefinition):
        return _open_timer(run, node.id, definition, owner, scope)
    assert isinstance(definition, MessageDefinition)
    key = None
    if definition.correlation_key is not None:
        found = run.value(definition.correlation_key, run.visible(scope))
        key = None if found is None else _key_text(found)
        if key is None:
            run.effects.append(RaiseIncident(node.id, "the correlation key evaluated to null"))
            return False
    wait = run.open_wait("message", node.id, owner)
    run.effects.append(OpenSubscription(wait.id, node.id, definition.name, key))
    return True


def _open_timer(
    run: Run, node_id: str, timer: TimerDefinition, owner: str, scope: str | None
) -> bool:
    text: object = timer.value
    if is_expression(timer.value):
        text = run.value(timer.value, run.visible(scope))
    try:
        if not isinstance(text, str):
            raise TimerError(f"the expression gave {text!r:.80}, not a text")
        spec = parse_timer(timer.kind, text)
    except TimerError as exc:
        run.effects.append(RaiseIncident(node_id, f"timer {timer.value!r}: {exc}"))
        return False
    wait = run.open_wait("timer", node_id, owner)
    run.effects.append(StartTimer(wait.id, node_id, spec))
    return True


def _key_text(value: Any) -> str:
    """Correlation keys compare as text: 42 and "42" are the same key."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _hold(run: Run, token: Token, node: Node) -> None:
    """The wait could not open: the token stays at `node` with the incident."""
    run.place(Token(token.id, node.id, scope=token.scope))


# --- a wait fired ----------------------------------------------------------------------


def fired(run: Run, wait: Wait, values: dict[str, Any], *, repeats: bool) -> None:
    node = run.process.nodes[wait.node_id]
    if isinstance(node, StartEvent):  # an event subprocess's
        scope = wait.owner if wait.owner in run.scopes else None
        keeps = not node.interrupting and (repeats or node.message is not None)
        if not keeps:  # a non-interrupting message start takes every message that comes
            run.close_wait(wait.id)
        start_event_subprocess(run, node, scope, values)
        return
    if isinstance(node, TimerBoundaryEvent | MessageBoundaryEvent):
        _boundary_fired(run, wait, node, values, repeats=repeats)
        return
    run.close_wait(wait.id)
    token = run.tokens[wait.owner]
    run.close_waits_of(token.id)  # an event-based gateway's other events
    if token.node_id != node.id:
        run.record("event_chosen", token.node_id, event=node.id)
        token = run.place(Token(token.id, node.id, scope=token.scope))
    if isinstance(node, ReceiveTask):
        activities.done(run, token, node, values)
        return
    if values:
        run.assign(token.scope, values)
    walk.leave(run, token)


def _boundary_fired(
    run: Run, wait: Wait, node: Boundary, values: dict[str, Any], *, repeats: bool
) -> None:
    outer = _outer(run, wait.owner, node.attached_to)
    run.record("boundary_fired", node.id, activity=node.attached_to)
    if node.interrupting:
        run.close_wait(wait.id)
        _interrupt(run, wait.owner, node.attached_to)
    elif not repeats:
        run.close_wait(wait.id)
    if values:
        run.assign(outer, values)
    walk.leave(run, run.spawn(node.id, outer))


def _outer(run: Run, owner: str, host_id: str) -> str | None:
    """The scope the activity runs in (where its boundary event's branch starts)."""
    scope_id = run.scopes[owner].parent if owner in run.scopes else run.tokens[owner].scope
    while scope_id is not None and run.scopes[scope_id].node_id == host_id:
        scope_id = run.scopes[scope_id].parent  # the activity's own (mappings) scope
    return scope_id


def _interrupt(run: Run, owner: str, host_id: str) -> None:
    """End the activity: the outermost of its own scopes (a loop body, a subprocess, a
    mappings scope) with everything in it, or else its token (and its task or child)."""
    scope_id = owner if owner in run.scopes else run.tokens[owner].scope
    outermost = None
    while scope_id is not None and run.scopes[scope_id].node_id == host_id:
        outermost, scope_id = scope_id, run.scopes[scope_id].parent
    if outermost is not None:
        run.close_scope(outermost)
    if owner in run.tokens:
        run.withdraw(run.tokens[owner])
