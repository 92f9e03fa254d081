"""Expired leases become new attempts (or incidents); due retries are dispatched again."""

from __future__ import annotations

from orchestrator.daemon.context import EngineContext
from orchestrator.daemon.effects import InstanceInfo, dispatch_next_attempt
from orchestrator.model.definition import ServiceTask
from orchestrator.store.store import Session
from orchestrator.store.unit_of_work import PublishedRow, TaskRow, UnitOfWork


async def reap_once(db: Session, context: EngineContext, *, limit: int) -> list[PublishedRow]:
    """One pass, inside the caller's transaction. Each task is locked with its instance, with
    SKIP LOCKED: any number of engines reap at once without taking the same task twice, and
    an instance a report batch holds is simply left for the next pass."""
    processes = context.processes
    uow = UnitOfWork()
    for record in await db.lock_due_tasks(limit):
        task = TaskRow.from_record(record)
        info = InstanceInfo(task.instance_id, record["process_key"], record["business_key"])
        node = (await processes.get(db, record["definition_id"])).nodes[task.node_id]
        max_expiries = node.max_lease_expiries if isinstance(node, ServiceTask) else 1
        uow.changed_tasks[task.id] = task
        if task.status == "claimed":
            _expired(uow, task, info, record["variables"], max_expiries)
        else:
            uow.record(
                task.instance_id,
                "task_retry_due",
                task.node_id,
                task.id,
                {"attempt": task.attempt + 1},
            )
            dispatch_next_attempt(uow, task, info, record["variables"])
    return await db.write(uow)


def _expired(
    uow: UnitOfWork,
    task: TaskRow,
    info: InstanceInfo,
    variables: dict[str, object],
    max_expiries: int,
) -> None:
    task.lease_expiries += 1
    task.error = f"lease expired: {task.worker_id} did not report within its lock"
    task.error_details = None
    uow.count("leases_expired")
    detail = {"attempt": task.attempt, "worker": task.worker_id, "expiries": task.lease_expiries}
    uow.record(task.instance_id, "lease_expired", task.node_id, task.id, detail)
    if task.lease_expiries >= max_expiries:
        task.status, task.worker_id, task.lease_ms = "incident", None, None
        uow.task_incident(
            task,
            "lease_expired",
            f"the lease of task {task.id} expired {task.lease_expiries} times "
            "(its workers die or hang)",
        )
        return
    dispatch_next_attempt(uow, task, info, variables)
