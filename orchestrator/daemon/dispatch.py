"""The dispatch watch: queued tasks whose message no worker claimed in time are published
again (see engine/dispatch.py for the rule), or raise a `dispatch_lost` incident.

PostgreSQL knows every open task; RabbitMQ may have lost a message (a purge, a queue policy,
a worker that acked without claiming). Each pass finds the topics whose longest-waiting
queued task is past the shortest deadline any of that topic's tasks has, asks the broker how
many messages wait in each such topic's queue (without a transaction open), and then, in
one transaction per topic, locks the tasks that are due with their instances (SKIP LOCKED:
every engine runs this) and writes the re-sends. A re-send is the same attempt
(`task_id:attempt`), so whichever copy a worker claims second is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from functools import partial
from typing import Any

import asyncpg
from aio_pika.abc import AbstractConnection

from orchestrator.broker.probe import queue_counts
from orchestrator.broker.topology import Topology
from orchestrator.config import Settings
from orchestrator.daemon.context import EngineContext
from orchestrator.daemon.db import RETRYABLE, in_transaction
from orchestrator.daemon.effects import InstanceInfo, apply_task_decision
from orchestrator.daemon.relay import Relay
from orchestrator.engine import task as lifecycle
from orchestrator.engine.dispatch import QueueState, due_after_ms
from orchestrator.model.definition import ServiceTask
from orchestrator.store.queries import Q
from orchestrator.store.unit_of_work import PublishedRow, TaskRow, UnitOfWork

log = logging.getLogger(__name__)

#: Tasks taken per topic and pass. The re-sends then wait in the queue, so the next pass
#: holds back (the queue has ready messages) until workers have taken them.
PASS_LIMIT = 500
#: The same while the queue has a backlog: what is due then waited ten deadlines behind
#: other messages. Few of those are lost; most are still in line, and each copy sent costs
#: the workers a delivery and a refused claim at a time when they are already behind.
BACKLOG_PASS_LIMIT = 50
#: Definitions read per query while learning their topics' deadlines.
DEFINITIONS_PER_QUERY = 100


class DispatchWatch:
    def __init__(
        self,
        pool: asyncpg.Pool,
        connection: AbstractConnection,
        relay: Relay,
        context: EngineContext,
        settings: Settings,
    ) -> None:
        self._pool = pool
        self._connection = connection
        self._relay = relay
        self._context = context
        self._topology = Topology(settings.namespace)
        self._default_ms = settings.dispatch_timeout_ms
        self._max_redispatches = settings.max_redispatches
        self._interval_s = settings.reaper_interval_ms / 1000
        #: Topic -> the shortest dispatch deadline of any service task on it.
        self._shortest: dict[str, int] = {}
        self._definitions_seen = 0
        #: Topic -> when (loop time) a pass last found its queue with no consumer.
        self._unread_at: dict[str, float] = {}

    async def run(self, stop: asyncio.Event) -> None:
        """A pass every reaper interval until `stop`. Neither a database nor a broker that
        is away stops the loop: the pass is tried again."""
        while not stop.is_set():
            try:
                await self._relay.publish(await self.check_once(stop))
            except RETRYABLE as exc:
                log.warning("dispatch watch: database unavailable: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._interval_s)

    async def check_once(self, stop: asyncio.Event | None = None) -> list[PublishedRow]:
        """One pass; the outbox rows of the re-sends, committed, for the relay to publish."""
        async with self._pool.acquire() as conn:
            waiting = await conn.fetch(Q.queued_topics)
            if not waiting or await conn.fetchval(Q.outbox_lapsed):
                return []
            await self._learn_deadlines(conn)
        overdue = {
            row["topic"]: row["oldest_ms"]
            for row in waiting
            if row["oldest_ms"] is not None and row["oldest_ms"] >= self._floor(row["topic"])
        }
        if not overdue:
            return []
        try:
            counts = await queue_counts(self._connection, self._topology, sorted(overdue))
        except Exception as exc:  # the broker is away: nothing can be re-sent anyway
            log.warning("dispatch watch: cannot read the task queues: %r", exc)
            return []
        published: list[PublishedRow] = []
        now = asyncio.get_running_loop().time()
        for topic, (ready, consumers) in counts.items():
            queue = QueueState(ready, consumers)
            if queue.consumers == 0:
                self._unread_at[topic] = now
                continue
            unread_at = self._unread_at.get(topic)
            read_for_ms = None if unread_at is None else int((now - unread_at) * 1000)
            floor_ms = due_after_ms(self._floor(topic), 0, queue)
            waited_ms = overdue[topic] if read_for_ms is None else min(overdue[topic], read_for_ms)
            if waited_ms < floor_ms:
                continue
            resend = partial(
                self._resend, topic=topic, floor_ms=floor_ms, queue=queue, read_for_ms=read_for_ms
            )
            published += await in_transaction(self._pool, resend, stop=stop)
        return published

    async def _resend(
        self,
        conn: asyncpg.Connection,
        *,
        topic: str,
        floor_ms: int,
        queue: QueueState,
        read_for_ms: int | None,
    ) -> list[PublishedRow]:
        uow = UnitOfWork()
        limit = BACKLOG_PASS_LIMIT if queue.backlog else PASS_LIMIT
        records = await conn.fetch(Q.lock_undispatched_tasks, topic, floor_ms, limit)
        for record in records:
            task = TaskRow.from_record(record)
            node = (await self._context.processes.get(conn, record["definition_id"])).nodes[
                task.node_id
            ]
            deadline_ms, most = self._limits(node)
            decision = lifecycle.redispatch(
                task,
                waited_ms=record["waited_ms"],
                deadline_ms=deadline_ms,
                redispatches=record["redispatches"],
                max_redispatches=most,
                queue=queue,
                read_for_ms=read_for_ms,
            )
            info = InstanceInfo(task.instance_id, record["process_key"], record["business_key"])
            apply_task_decision(uow, task, decision, info, record["variables"])
        if uow.redispatched or uow.changed_tasks:
            log.warning(
                "dispatch watch: topic %s: %d task messages published again, %d tasks lost "
                "(queue: %d ready, %d consumers)",
                topic,
                len(uow.redispatched),
                len(uow.changed_tasks),
                queue.ready,
                queue.consumers,
            )
        return await uow.write(conn, self._context.outbox_claim_ms, self._context.engine_id)

    def _limits(self, node: object) -> tuple[int, int]:
        """The task's dispatch deadline and how many re-sends it gets."""
        if not isinstance(node, ServiceTask):
            return self._default_ms, self._max_redispatches
        deadline = node.dispatch_timeout_ms or self._default_ms
        most = self._max_redispatches if node.max_redispatches is None else node.max_redispatches
        return deadline, most

    def _floor(self, topic: str) -> int:
        return self._shortest.get(topic, self._default_ms)

    async def _learn_deadlines(self, conn: asyncpg.Connection) -> None:
        """The shortest deadline of each topic, from the definitions deployed since the last
        look (a definition never changes once deployed)."""
        while True:
            rows = await conn.fetch(
                Q.definitions_after, self._definitions_seen, DEFINITIONS_PER_QUERY
            )
            for row in rows:
                for topic, deadline_ms in _deadlines(row["graph"], self._default_ms):
                    self._shortest[topic] = min(self._shortest.get(topic, deadline_ms), deadline_ms)
                self._definitions_seen = row["id"]
            if len(rows) < DEFINITIONS_PER_QUERY:
                return


def _deadlines(graph: dict[str, Any], default_ms: int) -> list[tuple[str, int]]:
    """(topic, dispatch deadline) of each service task of a stored graph."""
    return [
        (node["topic"], node.get("dispatch_timeout") or default_ms)
        for node in graph.get("nodes", ())
        if node.get("type") == "service_task"
    ]
