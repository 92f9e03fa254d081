"""Expired leases become new attempts (or incidents); due retries are dispatched again."""

from __future__ import annotations

import asyncio
import logging

from orchestrator.config import Settings
from orchestrator.daemon.context import EngineContext
from orchestrator.daemon.effects import InstanceInfo, apply_task_decision
from orchestrator.daemon.relay import Relay
from orchestrator.daemon.supervisor import sleep_or_stop
from orchestrator.engine import task as lifecycle
from orchestrator.model.definition import ServiceTask, fetch_list
from orchestrator.store.errors import RETRYABLE
from orchestrator.store.store import Session, Store
from orchestrator.store.unit_of_work import PublishedRow, TaskRow, UnitOfWork, variables_for_task

log = logging.getLogger(__name__)
#: Tasks taken per pass.
PASS_LIMIT = 500


async def reap_forever(
    store: Store, relay: Relay, context: EngineContext, settings: Settings, stop: asyncio.Event
) -> None:
    """A pass every reaper interval (at once again after a full one) until `stop`; now and
    then, idempotency keys past their retention are forgotten too."""
    interval = settings.reaper_interval_ms / 1000
    prune_every = max(1, int(60 / interval))
    rounds = 0

    async def reap(db: Session) -> list[PublishedRow]:
        return await reap_once(db, context, limit=PASS_LIMIT)

    while not stop.is_set():
        rows: list[PublishedRow] = []
        try:
            rows = await store.in_transaction(reap, stop=stop)
            await relay.publish(rows)
            rounds += 1
            if rounds % prune_every == 0:
                await store.prune_start_ledger(settings.start_key_retention_days)
        except RETRYABLE as exc:
            log.warning("reaper: %s", exc)
        if len(rows) < PASS_LIMIT:  # a full pass means more may be due: no sleep
            await sleep_or_stop(stop, interval)


async def reap_once(db: Session, context: EngineContext, *, limit: int) -> list[PublishedRow]:
    """One pass, inside the caller's transaction. Each task is locked with its instance, with
    SKIP LOCKED: any number of engines reap at once without taking the same task twice, and
    an instance a report batch holds is simply left for the next pass."""
    processes = context.processes
    uow = UnitOfWork()
    for record in await db.lock_due_tasks(limit):
        task = TaskRow.from_record(record)
        info = InstanceInfo.of_record(task.instance_id, record)
        node = (await processes.get(db, record["definition_id"])).nodes[task.node_id]
        max_expiries = node.max_lease_expiries if isinstance(node, ServiceTask) else 5
        decision = lifecycle.due(task, max_expiries=max_expiries)
        variables = variables_for_task(record, task.id, fetch_list(node))
        apply_task_decision(uow, task, decision, info, variables)
    return await db.write(uow)
