"""Carry out a pure transition's effects inside the current unit of work."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson

from orchestrator.daemon import calls
from orchestrator.engine.activities import CALL_TOPIC
from orchestrator.engine.state import (
    CreateTask,
    InstanceEnded,
    NotifyParent,
    OpenSubscription,
    RaiseIncident,
    Record,
    StartChild,
    StartTimer,
    Transition,
    WithdrawTask,
)
from orchestrator.engine.task import Decision, TaskState
from orchestrator.model.wire import WIRE_VERSION
from orchestrator.store.rows import Row
from orchestrator.store.unit_of_work import (
    NewSubscription,
    NewTimer,
    OutboxMessage,
    TaskRow,
    UnitOfWork,
)


@dataclass(frozen=True)
class InstanceInfo:
    """What a task message needs to know about its instance."""

    id: str
    process_key: str
    business_key: str | None
    #: The instance's W3C trace context: the header of its task messages (required, so that
    #: no new caller forgets it; None only for instances started before traces).
    traceparent: str | None

    @classmethod
    def of_record(cls, instance_id: str, record: Row) -> InstanceInfo:
        """From a row with the instance's process_key, business_key and traceparent (its
        own row, or a task's joined with it)."""
        return cls(
            instance_id, record["process_key"], record["business_key"], record["traceparent"]
        )


#: The worker id a call activity's task is held by while its child runs.
CALL_HOLDER = "engine"


def task_message(
    task: TaskRow,
    info: InstanceInfo,
    variables: dict[str, Any],
    *,
    redispatch: int = 0,
    extra: dict[str, Any] | None = None,
) -> OutboxMessage:
    """The task message of `task`'s current attempt (its `redispatch`-th re-send, if not 0).
    Built as a plain dict: this runs once per task on the engine's hot path, and the
    TaskMessage model (whose schema a test holds this to) would validate what the engine
    itself just decided."""
    message = {
        "v": WIRE_VERSION,
        "type": "task",
        "task_id": task.id,
        "attempt": task.attempt,
        "topic": task.topic,
        "instance_id": info.id,
        "process_key": info.process_key,
        "node_id": task.node_id,
        "business_key": info.business_key,
        "variables": variables,
        "lock_ms": task.lock_ms,
        "retries_left": task.retries_left,
        "previous_error": (
            {"message": task.error, "details": task.error_details}
            if task.error is not None and task.attempt > 1
            else None
        ),
        "idempotency_key": task.id,
        "created_at_ms": int(time.time() * 1000),
        "redispatch": redispatch,
    }
    if extra:  # a service task's headers, a user task's assignment
        message.update(extra)
    body = orjson.dumps(message)
    return OutboxMessage(task.topic, f"{task.id}:{task.attempt}", body, info.traceparent)


def apply_task_decision(
    uow: UnitOfWork,
    task: TaskRow,
    decision: Decision,
    info: InstanceInfo | None = None,
    variables: dict[str, Any] | None = None,
) -> None:
    """Write what the task's lifecycle decided (engine/task.py) into `uow`, and queue the
    task message it sends (decision.sends) for after commit: only that message needs `info`
    and `variables`. The answer and the engine step are the caller's."""
    if decision.state is not None:
        _set_state(task, decision.state)
        uow.changed_tasks[task.id] = task
    if decision.resolve is not None:
        uow.resolved_incidents.append((None, task.id, decision.resolve))
    record = decision.record
    if record is not None:
        uow.record(
            task.instance_id, record.kind, record.node_id, record.task_id, record.detail or None
        )
    if decision.incident is not None:
        incident = decision.incident
        uow.task_incident(task, incident.kind, incident.message, incident.details)
    if decision.counter is not None:
        uow.count(decision.counter)
        if decision.counter == "leases_expired":
            uow.task_events.append(("expired", task.topic))
    if decision.resend:  # the same attempt again: the row only restarts its dispatch clock
        uow.redispatched.append((task.id, task.attempt))
    if decision.sends and task.topic != CALL_TOPIC:  # a call is started again by its caller
        if info is None or variables is None:
            raise ValueError(f"the message of task {task.id} needs its instance and variables")
        uow.outbox.append(task_message(task, info, variables, redispatch=decision.resend))


def _set_state(task: TaskRow, state: TaskState) -> None:
    task.status = state.status
    task.attempt = state.attempt
    task.retries_left = state.retries_left
    task.worker_id = state.worker_id
    task.lease_expiries = state.lease_expiries
    task.lease_ms = state.lease_ms
    task.due_ms = state.due_ms
    task.error = state.error
    task.error_details = state.error_details


def apply_transition(uow: UnitOfWork, info: InstanceInfo, transition: Transition) -> None:
    for effect in transition.effects:
        if isinstance(effect, CreateTask):
            _create_task(uow, info, effect)
        elif isinstance(effect, WithdrawTask):
            _withdraw(uow, effect.task_id)
            if effect.call:
                uow.outbox.append(calls.cancel_child(effect.task_id, "its call activity ended"))
        elif isinstance(effect, RaiseIncident):
            uow.incident(info.id, effect.node_id, "process", effect.message, task_id=effect.task_id)
        elif isinstance(effect, InstanceEnded):
            uow.ended_instances.append(info.id)
            uow.instance_ends.append((info.process_key, effect.status))
            uow.count(f"instances_{effect.status}")
        elif isinstance(effect, Record):
            uow.record(info.id, effect.kind, effect.node_id, effect.task_id, effect.detail or None)
        elif isinstance(effect, StartChild):
            uow.outbox.append(calls.start_child(effect, traceparent=info.traceparent))
            uow.count("calls_started")
        elif isinstance(effect, NotifyParent):
            uow.outbox.append(calls.notify_parent(effect, info.id, info.traceparent))
        elif isinstance(effect, StartTimer):
            uow.new_timers.append(NewTimer(effect.wait_id, info.id, effect.node_id, effect.spec))
        elif isinstance(effect, OpenSubscription):
            # No correlation key in the model: the instance's business key (Camunda 7).
            key = (
                effect.correlation_key if effect.correlation_key is not None else info.business_key
            )
            uow.new_subscriptions.append(
                NewSubscription(effect.wait_id, info.id, effect.node_id, effect.name, key)
            )
            # A message may already be buffered for it: an engine looks after commit.
            uow.outbox.append(calls.deliver_buffered(effect.wait_id, effect.name, key))
        else:
            uow.closed_waits.append((effect.wait_id, effect.kind))


def _create_task(uow: UnitOfWork, info: InstanceInfo, effect: CreateTask) -> None:
    """A task row; an external task's message, or a call activity's row held by no worker
    (its child instance settles it: see calls.py)."""
    task = TaskRow(
        id=effect.task_id,
        instance_id=info.id,
        node_id=effect.node_id,
        topic=effect.topic,
        status="claimed" if effect.call else "queued",
        attempt=1,
        retries_left=effect.max_attempts - 1,
        lock_ms=effect.lock_ms,
        worker_id=CALL_HOLDER if effect.call else None,
        lease_expires_at=None,
        lease_expiries=0,
    )
    if effect.call:
        uow.new_waits.append(task)
        return
    uow.new_tasks.append(task)
    uow.outbox.append(task_message(task, info, effect.variables, extra=effect.message_fields))
    uow.count("tasks_created")


def _withdraw(uow: UnitOfWork, task_id: str) -> None:
    """Cancel an open task whose scope ended; its open incident is resolved with it."""
    changed = uow.changed_tasks.get(task_id)
    if changed is not None:  # decided in this batch too (a claim, say): one write of the row
        changed.status = "cancelled"
        changed.worker_id, changed.lease_ms, changed.due_ms = None, None, None
    else:
        uow.withdrawn_tasks.append(task_id)
    uow.resolved_incidents.append((None, task_id, "withdrawn: its scope ended"))
    uow.count("tasks_withdrawn")
