"""Expired leases become new attempts (or incidents); due retries are dispatched again."""

from __future__ import annotations

import asyncpg

from orchestrator.daemon.context import EngineContext
from orchestrator.daemon.effects import InstanceInfo, apply_task_decision
from orchestrator.engine import task as lifecycle
from orchestrator.model.definition import ServiceTask
from orchestrator.store.queries import Q
from orchestrator.store.unit_of_work import PublishedRow, TaskRow, UnitOfWork


async def reap_once(
    conn: asyncpg.Connection, context: EngineContext, *, limit: int
) -> list[PublishedRow]:
    """One pass, inside the caller's transaction. Each task is locked with its instance, with
    SKIP LOCKED: any number of engines reap at once without taking the same task twice, and
    an instance a report batch holds is simply left for the next pass."""
    processes = context.processes
    uow = UnitOfWork()
    for record in await conn.fetch(Q.lock_due_tasks, limit):
        task = TaskRow.from_record(record)
        info = InstanceInfo(task.instance_id, record["process_key"], record["business_key"])
        node = (await processes.get(conn, record["definition_id"])).nodes[task.node_id]
        max_expiries = node.max_lease_expiries if isinstance(node, ServiceTask) else 1
        decision = lifecycle.due(task, max_expiries=max_expiries)
        apply_task_decision(uow, task, decision, info, record["variables"])
    return await uow.write(conn, context.outbox_claim_ms, context.engine_id)
