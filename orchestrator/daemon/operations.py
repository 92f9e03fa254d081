"""Operator actions on instances: list incidents, retry a task in incident, cancel.

Each runs in one transaction under the instance's row lock (the lock every writer of its
tasks holds) and writes through the same unit of work as the report batches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from orchestrator.broker.topology import Topology
from orchestrator.daemon import calls
from orchestrator.daemon.context import EngineContext
from orchestrator.daemon.effects import (
    CALL_HOLDER,
    InstanceInfo,
    apply_task_decision,
    apply_transition,
)
from orchestrator.daemon.reports import Notice
from orchestrator.engine import task as lifecycle
from orchestrator.engine.activities import CALL_TOPIC
from orchestrator.engine.step import cancel_instance, restart_call, set_variables
from orchestrator.errors import InvalidCommand, InvalidState, NotFound
from orchestrator.model.definition import fetch_list
from orchestrator.model.wire import (
    CancelCommand,
    ListIncidentsCommand,
    RetryCommand,
    SetVariablesCommand,
    TaskRevoked,
)
from orchestrator.store.rows import Row
from orchestrator.store.store import Session
from orchestrator.store.unit_of_work import (
    PublishedRow,
    TaskRow,
    UnitOfWork,
    state_from_record,
    variables_for_task,
)


@dataclass
class OperationResult:
    result: dict[str, Any]
    publish: list[PublishedRow] = field(default_factory=list)
    notices: list[Notice] = field(default_factory=list)


async def list_incidents(db: Session, command: ListIncidentsCommand) -> dict[str, Any]:
    incidents = await db.list_incidents(
        command.process_key, command.instance_id, command.include_resolved, command.limit
    )
    return {"incidents": incidents}


async def retry(db: Session, context: EngineContext, command: RetryCommand) -> OperationResult:
    """Resolve the incident and dispatch its task again with `command.retries` attempts."""
    incident = await _find_incident(db, command)
    instance = _found(await db.lock_instance(incident["instance_id"]), "instance")
    # Read again under the lock: a concurrent retry or cancel may have resolved it.
    incident = _found(await db.incident_by_id(incident["id"]), "incident")
    if incident["resolved_at"] is not None:
        if incident["resolution"] == "retried":  # a resent command: answer as the first time
            return OperationResult(_retry_result(incident, None, already=True))
        raise InvalidState(f"incident {incident['id']} is already {incident['resolution']}")
    if incident["task_id"] is None:
        raise InvalidState(
            f"incident {incident['id']} ({incident['kind']}) has no task to retry: "
            "cancel the instance, or deploy a fixed definition and start a new one"
        )
    tasks = await db.tasks_by_id([incident["task_id"]])
    task = tasks[0]
    decision = lifecycle.operator_retry(
        task,
        retries=command.retries,
        incident_id=str(incident["id"]),
        instance_active=instance["status"] == "active",
    )
    uow = UnitOfWork()
    info = InstanceInfo.of_record(task.instance_id, instance)
    process = await context.processes.get(db, instance["definition_id"])
    only = fetch_list(process.nodes.get(task.node_id))
    apply_task_decision(uow, task, decision, info, variables_for_task(instance, task.id, only))
    if task.topic == CALL_TOPIC and task.id in uow.changed_tasks and task.status == "queued":
        await _restart_call(db, context, uow, instance, task)
    await db.archive_outcome(task.id)
    publish = await db.write(uow)
    return OperationResult(_retry_result(incident, task, already=False), publish)


async def _restart_call(
    db: Session, context: EngineContext, uow: UnitOfWork, instance: Row, task: TaskRow
) -> None:
    """A call whose child could not start: send its start again, held by the engine."""
    process = await context.processes.get(db, instance["definition_id"])
    start = restart_call(process, state_from_record(instance), task.id)
    task.status, task.worker_id = "claimed", CALL_HOLDER
    uow.outbox.append(
        calls.start_child(start, attempt=task.attempt, traceparent=instance["traceparent"])
    )


async def _refuse_cancelling_a_called_instance(db: Session, instance: Row) -> None:
    """An instance a call activity waits for is cancelled through its caller."""
    called_by = state_from_record(instance).called_by
    if called_by is None:
        return
    waiting = await db.tasks_by_id([called_by.task_id])
    if waiting and waiting[0].is_open:
        raise InvalidState(
            f"instance {instance['id']} was started by a call activity of instance "
            f"{called_by.instance_id}: cancel that instance"
        )


async def _find_incident(db: Session, command: RetryCommand) -> Row:
    if (command.incident_id is None) == (command.task_id is None):
        raise InvalidCommand("retry needs exactly one of incident_id and task_id")
    if command.incident_id is not None:
        row = await db.incident_by_id(command.incident_id)
        if row is None:
            raise NotFound(f"incident {command.incident_id} does not exist")
        return row
    row = await db.open_incident_of_task(command.task_id)
    if row is None:
        raise NotFound(f"task {command.task_id} has no open incident")
    return row


async def _locked_instance(db: Session, instance_id: str) -> Row:
    """The instance's row under its lock (the lock every writer of its tasks holds)."""
    instance = await db.lock_instance(instance_id)
    if instance is None:
        raise NotFound(f"instance {instance_id} does not exist")
    return instance


def _found(row: Row | None, what: str) -> Row:
    """A row read again under its lock (it is never deleted)."""
    if row is None:
        raise NotFound(f"the {what} is gone")
    return row


def _retry_result(incident: Row, task: TaskRow | None, *, already: bool) -> dict[str, Any]:
    return {
        "incident_id": str(incident["id"]),
        "task_id": str(incident["task_id"]),
        "instance_id": str(incident["instance_id"]),
        "attempt": task.attempt if task else None,
        "already_retried": already,
    }


async def cancel(
    db: Session, context: EngineContext, command: CancelCommand, topology: Topology
) -> OperationResult:
    """End the instance; withdraw its open tasks; tell the workers holding them to stop."""
    instance = await _locked_instance(db, command.instance_id)
    result = {"instance_id": str(instance["id"]), "already_cancelled": False}
    if instance["status"] == "cancelled":  # a resent command
        return OperationResult({**result, "already_cancelled": True})
    if instance["status"] != "active":
        raise InvalidState(f"instance {instance['id']} is already {instance['status']}")
    await _refuse_cancelling_a_called_instance(db, instance)
    uow = UnitOfWork()
    transition = cancel_instance(state_from_record(instance), command.reason)
    uow.changed_instances[transition.state.id] = transition.state
    info = InstanceInfo.of_record(transition.state.id, instance)
    apply_transition(uow, info, transition)
    notices = []
    for record in await db.open_tasks_of_instance(instance["id"]):
        task = TaskRow.from_record(record)
        decision = lifecycle.cancel(task)
        if isinstance(decision.answer, TaskRevoked):
            notices.append(_revoke_notice(task, decision.answer, topology))
        apply_task_decision(uow, task, decision, info, instance["variables"])  # sends nothing
        if task.topic == CALL_TOPIC:
            uow.outbox.append(calls.cancel_child(task.id, "its calling instance was cancelled"))
    for row in await db.open_incidents_of_instance(instance["id"]):
        uow.resolved_incidents.append((str(row["id"]), None, "instance cancelled"))
    publish = await db.write(uow)
    return OperationResult({**result, "cancelled_tasks": len(uow.changed_tasks)}, publish, notices)


async def set_instance_variables(db: Session, command: SetVariablesCommand) -> dict[str, Any]:
    """Set the variables under the instance's lock, through the same write as a round."""
    instance = await _locked_instance(db, command.instance_id)
    if instance["status"] != "active":
        raise InvalidState(
            f"instance {instance['id']} is {instance['status']}: only an active instance's "
            "variables can be set"
        )
    state = state_from_record(instance)
    if command.scope is not None and all(s.id != command.scope for s in state.scopes):
        raise NotFound(f"instance {instance['id']} has no scope {command.scope}")
    transition = set_variables(state, command.scope, command.variables)
    uow = UnitOfWork()
    uow.changed_instances[transition.state.id] = transition.state
    apply_transition(uow, InstanceInfo.of_record(transition.state.id, instance), transition)
    await db.write(uow)
    return {
        "instance_id": str(instance["id"]),
        "scope": command.scope,
        "names": sorted(command.variables),
    }


def _revoke_notice(task: TaskRow, revoked: TaskRevoked, topology: Topology) -> Notice:
    """Best effort: the holder stops now instead of at its next heartbeat or report."""
    inbox = topology.worker_inbox(task.worker_id or "")
    return Notice(inbox, orjson.dumps(revoked.model_dump()))
