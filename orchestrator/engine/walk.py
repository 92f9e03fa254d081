"""Moving tokens: events, gateways and the end of scopes, on a Run.

`drain` enters every pending arrival until each token waits (at a task, a call activity or
a join), ends, or is held by an incident; then it fires the inclusive joins no token can
still reach and ends the scopes left empty, and goes on until nothing moves.
"""

from __future__ import annotations

from orchestrator.definitions.expressions import evaluate_condition
from orchestrator.engine import activities, events
from orchestrator.engine.run import Arrival, Run
from orchestrator.engine.state import InstanceEnded, NotifyParent, RaiseIncident, Token
from orchestrator.model.definition import (
    EndEvent,
    ErrorBoundaryEvent,
    ErrorEndEvent,
    EventBasedGateway,
    ExclusiveGateway,
    InclusiveGateway,
    MessageBoundaryEvent,
    MessageCatchEvent,
    ParallelGateway,
    SequenceFlow,
    StartEvent,
    SubProcess,
    TerminateEndEvent,
    TimerBoundaryEvent,
    TimerCatchEvent,
)


def drain(run: Run) -> None:
    while run.status == "active":
        if run.arrivals:
            arrival = run.arrivals.popleft()
            if not run.count_step():
                _incident(run, arrival.token, "the process loops without reaching a task")
                run.arrivals.clear()
                continue
            _enter(run, arrival)
        elif not (_fire_inclusive_joins(run) or _end_empty_scopes(run)):
            return


def leave(run: Run, token: Token, flows: tuple[SequenceFlow, ...] | None = None) -> None:
    """Send `token` along `flows` (default: every outgoing flow of its node); a flow beyond
    the first gets a token of its own (an activity with two outgoing flows forks)."""
    chosen = run.process.outgoing.get(token.node_id, ()) if flows is None else flows
    for number, flow in enumerate(chosen):
        moving = token if number == 0 else run.spawn(token.node_id, token.scope)
        run.send(moving, flow.target, flow.id)


def _enter(run: Run, arrival: Arrival) -> None:
    token = arrival.token
    node = run.process.nodes[token.node_id]
    if isinstance(
        node, StartEvent | ErrorBoundaryEvent | TimerBoundaryEvent | MessageBoundaryEvent
    ):
        leave(run, token)
    elif isinstance(node, TimerCatchEvent | MessageCatchEvent):
        events.catch(run, token, node)
    elif isinstance(node, EventBasedGateway):
        events.gateway(run, token, node)
    elif isinstance(node, EndEvent):
        run.record("end_event", node.id)
        _consume(run, token)
    elif isinstance(node, ErrorEndEvent):
        run.record("error_thrown", node.id, code=node.error_code)
        run.drop(token)
        if not throw(run, token.scope, None, node.error_code, node.error_message, {}):
            run.place(token)
            _incident(run, token, f"error {node.error_code!r} is not caught by any boundary event")
    elif isinstance(node, TerminateEndEvent):
        run.record("terminated", node.id)
        run.cut(token.scope)
        end_scope(run, token.scope)
    elif isinstance(node, ExclusiveGateway):
        _exclusive(run, token, node)
    elif isinstance(node, ParallelGateway):
        _parallel(run, token, node, arrival.flow_id)
    elif isinstance(node, InclusiveGateway):
        _inclusive(run, token, node, arrival.flow_id)
    else:
        activities.arrive(run, token, node)


def _consume(run: Run, token: Token) -> None:
    run.drop(token)
    run.emptied.add(token.scope)


def _incident(run: Run, token: Token, message: str) -> None:
    run.place(Token(token.id, token.node_id, scope=token.scope))
    run.effects.append(RaiseIncident(token.node_id, message))


# --- gateways --------------------------------------------------------------------------


def _exclusive(run: Run, token: Token, node: ExclusiveGateway) -> None:
    flows = run.process.outgoing.get(node.id, ())
    context = run.visible(token.scope)
    for flow in flows:
        condition = run.process.conditions.get(flow.id)
        if condition is not None and evaluate_condition(condition, context):
            run.record("flow_taken", node.id, flow=flow.id)
            leave(run, token, (flow,))
            return
    default = next((flow for flow in flows if flow.id == node.default), None)
    if default is None and len(flows) == 1 and flows[0].condition is None:
        default = flows[0]
    if default is None:
        _incident(run, token, f"no outgoing flow of gateway '{node.id}' applies")
        return
    run.record("flow_taken", node.id, flow=default.id)
    leave(run, token, (default,))


def _parallel(run: Run, token: Token, node: ParallelGateway, flow_id: str | None) -> None:
    incoming = run.process.incoming.get(node.id, ())
    if len(incoming) > 1:
        run.place(Token(token.id, node.id, scope=token.scope, joined=flow_id))
        waiting = _waiting_at(run, node.id, token.scope)
        first_by_flow: dict[str, Token] = {}
        for waiter in waiting:
            first_by_flow.setdefault(waiter.joined or "", waiter)
        if any(flow.id not in first_by_flow for flow in incoming):
            return
        for waiter in first_by_flow.values():
            run.drop(waiter)
        run.record("joined", node.id, tokens=len(first_by_flow))
        token = run.place(Token(token.id, node.id, scope=token.scope))
    leave(run, token)


def _inclusive(run: Run, token: Token, node: InclusiveGateway, flow_id: str | None) -> None:
    if len(run.process.incoming.get(node.id, ())) > 1:
        # Waits: _fire_inclusive_joins lets it go once no other token can still come.
        run.place(Token(token.id, node.id, scope=token.scope, joined=flow_id))
        return
    _inclusive_fork(run, token, node)


def _inclusive_fork(run: Run, token: Token, node: InclusiveGateway) -> None:
    flows = run.process.outgoing.get(node.id, ())
    context = run.visible(token.scope)
    chosen = tuple(
        flow
        for flow in flows
        if (condition := run.process.conditions.get(flow.id)) is not None
        and evaluate_condition(condition, context)
    )
    if not chosen:
        chosen = tuple(flow for flow in flows if flow.id == node.default)
    if not chosen and len(flows) == 1 and flows[0].condition is None:
        chosen = flows
    if not chosen:
        _incident(run, token, f"no outgoing flow of gateway '{node.id}' applies")
        return
    run.record("flows_taken", node.id, flows=[flow.id for flow in chosen])
    leave(run, token, chosen)


def _waiting_at(run: Run, node_id: str, scope: str | None) -> list[Token]:
    return [
        t
        for t in run.tokens.values()
        if t.node_id == node_id and t.scope == scope and t.joined is not None
    ]


def _fire_inclusive_joins(run: Run) -> bool:
    """Let go every inclusive join that no other token of its scope can still reach."""
    if not run.process.reaches:
        return False
    for token in list(run.tokens.values()):
        reach = run.process.reaches.get(token.node_id)
        if reach is None or token.joined is None or token.id not in run.tokens:
            continue
        if any(_position(run, other, token.scope) in reach for other in run.tokens.values()):
            continue
        waiting = _waiting_at(run, token.node_id, token.scope)
        for waiter in waiting:
            run.drop(waiter)
        run.record("joined", token.node_id, tokens=len(waiting))
        node = run.process.nodes[token.node_id]
        assert isinstance(node, InclusiveGateway)
        _inclusive_fork(run, run.place(Token(token.id, node.id, scope=token.scope)), node)
        return True
    return False


def _position(run: Run, token: Token, scope: str | None) -> str | None:
    """The node `token` stands at, seen from `scope`: its own node if it is in that scope,
    the activity holding it if it is deeper, None if it is elsewhere or waits at a join."""
    if token.joined is not None and token.scope == scope:
        return None
    inner, node_id = token.scope, token.node_id
    while inner != scope:
        if inner is None:
            return None
        holder = run.scopes[inner]
        inner, node_id = holder.parent, holder.node_id
    return node_id


# --- the end of scopes and errors ------------------------------------------------------


def _end_empty_scopes(run: Run) -> bool:
    # A scope an error or a terminate end event closed meanwhile is gone: nothing to end.
    run.emptied = {s for s in run.emptied if s is None or s in run.scopes}
    for scope_id in sorted(run.emptied, key=lambda s: -_depth(run, s)):
        run.emptied.discard(scope_id)
        if not run.has_work_in(scope_id):
            end_scope(run, scope_id)
            return True
    return False


def _depth(run: Run, scope_id: str | None) -> int:
    depth = 0
    while scope_id is not None:
        depth, scope_id = depth + 1, run.scopes[scope_id].parent
    return depth


def end_scope(run: Run, scope_id: str | None) -> None:
    """A scope with nothing left in it ends: the process completes, a subprocess moves on."""
    if scope_id is None:
        run.status = "completed"
        run.tokens.clear()
        run.scopes.clear()
        run.effects.append(InstanceEnded("completed"))
        if run.called_by is not None:
            run.effects.append(NotifyParent(run.called_by, dict(run.variables)))
        return
    activities.subprocess_done(run, scope_id)


def throw(
    run: Run,
    scope_id: str | None,
    activity_id: str | None,
    code: str,
    message: str | None,
    values: dict[str, object],
) -> bool:
    """Throw the business error `code` from `activity_id` (a task) or from inside `scope_id`
    to the nearest catcher: an error event subprocess of a scope it is in, or an error
    boundary event, interrupting what it is attached to; else to the calling instance if it
    catches it. False: nothing catches it."""
    for host_id, interrupted, is_container in _catchers(run, scope_id, activity_id):
        if is_container:
            if _to_event_subprocess(run, host_id, interrupted, code, values):
                return True
            continue
        boundary = run.process.catching_boundary(host_id, code)
        if boundary is None:
            continue
        outer = run.scopes[interrupted].parent if interrupted is not None else scope_id
        if interrupted is not None:
            run.close_scope(interrupted)
        caught: dict[str, object] = dict(values)
        if boundary.code_variable:
            caught[boundary.code_variable] = code
        if boundary.message_variable:
            caught[boundary.message_variable] = message
        run.assign(outer, caught)
        run.record("error_caught", boundary.id, code=code, activity=host_id)
        leave(run, run.spawn(boundary.id, outer))
        return True
    return _to_caller(run, code, message, values)


def _to_caller(run: Run, code: str, message: str | None, values: dict[str, object]) -> bool:
    called_by = run.called_by
    if called_by is None or (code not in called_by.catches and None not in called_by.catches):
        return False
    run.cut(None)
    run.status = "cancelled"
    run.record("error_thrown_to_caller", None, code=code)
    run.effects.append(InstanceEnded("cancelled"))
    run.effects.append(NotifyParent(called_by, dict(values), code, message))
    return True


def _to_event_subprocess(
    run: Run, container: str, scope: str | None, code: str, values: dict[str, object]
) -> bool:
    """Start the error event subprocess of `container` (a subprocess's id, or "" for the
    process) that catches `code`, in `scope`: an exact code wins over a catch-all."""
    subs = run.process.event_subprocesses.get(container or None, ())
    starts = [run.process.nodes[run.process.starts[sub.id]] for sub in subs]
    errors = [s for s in starts if isinstance(s, StartEvent) and s.error]
    start = next((s for s in errors if s.error_code == code), None)
    start = start or next((s for s in errors if s.error_code is None), None)
    if start is None:
        return False
    run.record("error_caught", start.id, code=code, activity=container or None)
    events.start_event_subprocess(run, start, scope, dict(values))
    return True


def _catchers(
    run: Run, scope_id: str | None, activity_id: str | None
) -> list[tuple[str, str | None, bool]]:
    """Innermost first: (activity, the scope to close when its boundary event catches,
    False), and for each subprocess scope and the process, (its id or "", that scope, True)
    for its error event subprocesses. An error thrown inside an event subprocess is not
    caught by the event subprocesses beside it."""
    found: list[tuple[str, str | None, bool]] = []
    if activity_id is not None:
        found.append((activity_id, None, False))
    came_from_event_sub = False
    while scope_id is not None:
        scope = run.scopes[scope_id]
        node = run.process.nodes[scope.node_id]
        if scope.kind == "subprocess" and not came_from_event_sub:
            found.append((scope.node_id, scope.id, True))
        came_from_event_sub = isinstance(node, SubProcess) and node.triggered_by_event
        if found and not found[-1][2] and found[-1][0] == scope.node_id:
            found[-1] = (scope.node_id, scope.id, False)  # the outermost scope of that activity
        elif not came_from_event_sub:
            found.append((scope.node_id, scope.id, False))
        scope_id = scope.parent
    if not came_from_event_sub:
        found.append(("", None, True))
    return found
