"""Activities on a Run: tasks, call activities, subprocesses, and multi-instance loops.

An activity with input mappings runs in a scope of its own holding them; a multi-instance
activity runs in a body scope (the loop's progress) with one element scope per element.
When an activity is done its outputs (or, without output mappings, its result) go to the
enclosing scope, its scopes close, and its token leaves, or its loop moves on.
"""

from __future__ import annotations

from typing import Any

from orchestrator.engine import events, walk
from orchestrator.engine.run import Run, WorkScope, loop_with
from orchestrator.engine.state import (
    CalledBy,
    CreateTask,
    Loop,
    RaiseIncident,
    Record,
    StartChild,
    Token,
)
from orchestrator.model.definition import (
    CallActivity,
    ManualTask,
    Node,
    ReceiveTask,
    ServiceTask,
    SubProcess,
    UserTask,
)

Activity = ServiceTask | UserTask | ManualTask | SubProcess | CallActivity | ReceiveTask
#: The topic of the task row a call activity waits on (never published).
CALL_TOPIC = "call-activity"
#: A user task's lease, when it sets none: it is held until completed (about 24 days).
USER_TASK_LOCK_MS = 2_000_000_000


def arrive(run: Run, token: Token, node: Node) -> None:
    assert isinstance(node, Activity)
    if node.multi_instance is not None:
        _start_loop(run, token, node)
    else:
        _run(run, token, node)


def _run(run: Run, token: Token, node: Activity, *, boundaries: bool = True) -> None:
    """Start one run of the activity (for a loop: one element, in the element's scope, whose
    boundary events belong to the whole loop: `boundaries` False)."""
    if node.inputs:
        context = dict(run.visible(token.scope))
        local: dict[str, Any] = {}
        for mapping in node.inputs:
            local[mapping.target] = context[mapping.target] = run.value(mapping.source, context)
        element = run.scopes.get(token.scope) if token.scope is not None else None
        if element is not None and element.kind == "mi_element" and element.node_id == node.id:
            element.variables.update(local)
        else:
            scope = run.open_scope("activity", node.id, token.scope, local)
            token = run.place(Token(token.id, node.id, scope=scope.id))
    if isinstance(node, ServiceTask | UserTask):
        _create_task(run, token, node)
    elif isinstance(node, CallActivity):
        _call(run, token, node)
    elif isinstance(node, ReceiveTask):
        run.place(Token(token.id, node.id, scope=token.scope))
        events.receive(run, token, node)
    elif isinstance(node, SubProcess):
        run.drop(token)
        inner = run.open_scope("subprocess", node.id, token.scope)
        run.record("subprocess_started", node.id)
        if boundaries:
            events.open_boundaries(run, node.id, inner.id, inner.id)
        events.open_event_subprocesses(run, node.id, inner.id)
        start = run.spawn(run.process.starts[node.id], inner.id)
        run.send(start, start.node_id, None)
        return
    else:
        done(run, token, node, {})
        return
    if boundaries:
        events.open_boundaries(run, node.id, token.id, token.scope)


def _create_task(run: Run, token: Token, node: ServiceTask | UserTask) -> None:
    task_id = run.new_id()
    run.place(Token(token.id, node.id, task_id, token.scope))
    seen = run.visible(token.scope)
    only = node.fetch_variables if isinstance(node, ServiceTask) else None
    shown = seen if only is None else {name: seen[name] for name in only if name in seen}
    if isinstance(node, ServiceTask):
        fields: dict[str, Any] | None = {"headers": dict(node.headers)} if node.headers else None
        lock_ms = node.lock_ms
    else:
        fields = _user_task_fields(node)
        lock_ms = node.lock_ms if node.lock_ms is not None else USER_TASK_LOCK_MS
    create = CreateTask(
        task_id, node.id, node.topic, lock_ms, node.retry.max_attempts, dict(shown), fields
    )
    run.effects.append(create)
    run.effects.append(Record("task_created", node.id, task_id, {"topic": node.topic}))


def _user_task_fields(node: UserTask) -> dict[str, Any]:
    details = {
        "assignee": node.assignee,
        "candidate_groups": list(node.candidate_groups) or None,
        "candidate_users": list(node.candidate_users) or None,
        "form_key": node.form_key,
        "due_date": node.due_date,
    }
    fields: dict[str, Any] = {
        "user_task": {key: value for key, value in details.items() if value is not None}
    }
    if node.headers:
        fields["headers"] = dict(node.headers)
    return fields


def _call(run: Run, token: Token, node: CallActivity) -> None:
    """The child instance's id is the id of the task row the call waits on."""
    child_id = run.new_id()
    waiting = run.place(Token(token.id, node.id, child_id, token.scope))
    run.effects.append(CreateTask(child_id, node.id, CALL_TOPIC, USER_TASK_LOCK_MS, 1, call=True))
    run.effects.append(child_start(run, waiting, node))
    run.record("call_started", node.id, child=child_id, process=node.called_element)


def child_start(run: Run, token: Token, node: CallActivity) -> StartChild:
    """The start of the child `token` waits for: the variables it gets, the error codes
    its caller catches."""
    assert token.task_id is not None
    seen = run.visible(token.scope)
    given: dict[str, Any] = dict(seen) if node.propagate_all_in else {}
    for mapping in node.inputs:
        given[mapping.target] = seen.get(mapping.target)
    called_by = CalledBy(run.id, token.task_id, _catches(run, token.scope, node.id))
    return StartChild(token.task_id, node.called_element, node.version, given, called_by)


def _catches(run: Run, scope_id: str | None, node_id: str) -> tuple[str | None, ...]:
    """Every error code a boundary event around the call (or further up, in this instance
    or in those that called it) catches: None stands for a catch-all."""
    codes = [b.error_code for b in run.process.boundaries.get(node_id, ())]
    while scope_id is not None:
        scope = run.scopes[scope_id]
        codes += [b.error_code for b in run.process.boundaries.get(scope.node_id, ())]
        scope_id = scope.parent
    if run.called_by is not None:
        codes += list(run.called_by.catches)
    return tuple(dict.fromkeys(codes))


def done(
    run: Run, token: Token, node: Activity, result: dict[str, Any], *, propagate: bool = True
) -> None:
    """One run of the activity ended with `result`: map its outputs, close its scope, and
    leave (or, in a loop, hand the element's output to the loop)."""
    run.close_waits_of(token.id)  # its boundary events
    own = run.scopes.get(token.scope) if token.scope is not None else None
    if own is not None and own.node_id != node.id:
        own = None  # the token runs in the enclosing scope: the activity has none
    outer = own.parent if own is not None else token.scope
    looped = own is not None and own.kind == "mi_element"
    # Only output mappings and loops read the context: a plain task's completion skips it.
    context = {**run.visible(token.scope), **result} if node.outputs or looped else result
    if node.outputs:
        run.assign(outer, {m.target: run.value(m.source, context) for m in node.outputs})
    elif propagate and result:
        run.assign(token.scope, result)
    if own is not None and looped:
        _element_done(run, token, node, own, context)
        return
    if own is not None:
        run.close_scope(own.id)
    walk.leave(run, run.place(Token(token.id, node.id, scope=outer)))


def subprocess_done(run: Run, scope_id: str) -> None:
    inner = run.scopes.pop(scope_id)
    node = run.process.nodes[inner.node_id]
    assert isinstance(node, SubProcess)
    if node.triggered_by_event:  # no flows out: the scope it ran in may end now
        run.record("event_subprocess_ended", node.id)
        run.emptied.add(inner.parent)
        return
    run.record("subprocess_ended", node.id)
    # Its own variables stay its own: only its output mappings can read them.
    done(run, run.spawn(node.id, inner.parent), node, inner.variables, propagate=False)


# --- multi-instance --------------------------------------------------------------------


def _start_loop(run: Run, token: Token, node: Activity) -> None:
    loop_def = node.multi_instance
    assert loop_def is not None
    context = run.visible(token.scope)
    items: tuple[Any, ...] | None = None
    if loop_def.collection is not None:
        found = run.value(loop_def.collection, context)
        if not isinstance(found, list):
            _hold(run, token, f"multi-instance collection is not a list: {found!r:.80}")
            return
        items, total = tuple(found), len(found)
    else:
        count = run.value(loop_def.cardinality or "0", context)
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            _hold(run, token, f"multi-instance cardinality is not a whole number: {count!r:.80}")
            return
        total = count
    outputs = (None,) * total if loop_def.output_collection is not None else None
    run.drop(token)
    body = run.open_scope("mi_body", node.id, token.scope, loop=Loop(total, 0, 0, items, outputs))
    run.record("loop_started", node.id, elements=total)
    events.open_boundaries(run, node.id, body.id, token.scope)
    if total == 0:
        _finish_loop(run, body, node)
        return
    for index in range(1 if loop_def.sequential else total):
        _start_element(run, body, node, index)


def _hold(run: Run, token: Token, message: str) -> None:
    run.place(Token(token.id, token.node_id, scope=token.scope))
    run.effects.append(RaiseIncident(token.node_id, message))


def _start_element(run: Run, body: WorkScope, node: Activity, index: int) -> None:
    loop, loop_def = body.loop, node.multi_instance
    assert loop is not None and loop_def is not None
    values: dict[str, Any] = {"loopCounter": index + 1}
    if loop_def.element_variable is not None and loop.items is not None:
        values[loop_def.element_variable] = loop.items[index]
    element = run.open_scope("mi_element", node.id, body.id, values, index=index)
    run.set_loop(body, loop_with(loop, started=loop.started + 1))
    _run(run, run.spawn(node.id, element.id), node, boundaries=False)


def _element_done(
    run: Run, token: Token, node: Activity, element: WorkScope, context: dict[str, Any]
) -> None:
    body = run.scopes[element.parent or ""]
    loop, loop_def = body.loop, node.multi_instance
    assert loop is not None and loop_def is not None and element.index is not None
    outputs = loop.outputs
    if outputs is not None and loop_def.output_element is not None:
        produced = run.value(loop_def.output_element, context)
        outputs = (*outputs[: element.index], produced, *outputs[element.index + 1 :])
    loop = loop_with(loop, completed=loop.completed + 1, outputs=outputs)
    run.set_loop(body, loop)
    run.drop(token)
    run.close_scope(element.id)
    finished = loop.completed >= loop.total
    if not finished and loop_def.completion_condition is not None:
        counts = _loop_counts(loop)
        finished = run.value(loop_def.completion_condition, {**context, **counts}) is True
    if finished:
        _finish_loop(run, body, node)
    elif loop_def.sequential:
        _start_element(run, body, node, loop.started)


def _loop_counts(loop: Loop) -> dict[str, int]:
    active = loop.started - loop.completed
    return {
        "nrOfInstances": loop.total,
        "nrOfCompletedInstances": loop.completed,
        "nrOfActiveInstances": active,
        "numberOfInstances": loop.total,
        "numberOfCompletedInstances": loop.completed,
        "numberOfActiveInstances": active,
    }


def _finish_loop(run: Run, body: WorkScope, node: Activity) -> None:
    loop, loop_def = body.loop, node.multi_instance
    assert loop is not None and loop_def is not None
    run.close_scope(body.id)  # withdraws the elements a completion condition cut short
    if loop_def.output_collection is not None:
        run.assign(body.parent, {loop_def.output_collection: list(loop.outputs or ())})
    run.record("loop_ended", node.id, completed=loop.completed, elements=loop.total)
    walk.leave(run, run.spawn(node.id, body.parent))
