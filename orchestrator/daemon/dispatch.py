"""The dispatch watch: queued tasks whose message no worker claimed in time are published
again (see engine/dispatch.py for the rule), or raise a `dispatch_lost` incident.

PostgreSQL knows every open task; RabbitMQ may have lost a message (a purge, a queue policy,
a worker that acked without claiming). Each pass finds the topics whose longest-waiting
queued task is past the shortest deadline any of that topic's tasks has, asks the broker how
many reports wait for the engines and how many messages wait in each such topic's queue
(without a transaction open), and then, unless reports wait, in one transaction per topic,
locks the tasks that are due with their instances (SKIP LOCKED: every engine runs this) and
writes the re-sends. A re-send is the same attempt
(`task_id:attempt`), so whichever copy a worker claims second is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from functools import partial
from typing import Any

from aio_pika.abc import AbstractConnection

from orchestrator.broker.probe import QueueProbe, queue_counts
from orchestrator.broker.topology import Topology
from orchestrator.config import Settings
from orchestrator.daemon.context import EngineContext
from orchestrator.daemon.effects import InstanceInfo, apply_task_decision
from orchestrator.daemon.relay import Relay
from orchestrator.engine import task as lifecycle
from orchestrator.engine.dispatch import (
    QueueState,
    Since,
    counted_ms,
    due_after_ms,
)
from orchestrator.model.definition import ServiceTask, fetch_list
from orchestrator.store.errors import RETRYABLE
from orchestrator.store.store import Session, Store
from orchestrator.store.unit_of_work import PublishedRow, TaskRow, UnitOfWork, variables_for_task

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
        store: Store,
        connection: AbstractConnection,
        relay: Relay,
        context: EngineContext,
        settings: Settings,
    ) -> None:
        self._store = store
        self._probe = QueueProbe(connection)
        self._relay = relay
        self._context = context
        self._topology = Topology(settings.namespace)
        self._default_ms = settings.dispatch_timeout_ms
        self._max_redispatches = settings.max_redispatches
        self._interval_s = settings.reaper_interval_ms / 1000
        #: Topic -> the shortest dispatch deadline of any service task on it.
        self._shortest: dict[str, int] = {}
        self._definitions_seen = 0
        #: Topic -> since when (loop time) its queue has had a consumer.
        self._read: dict[str, Since] = {}
        #: Since when no report has waited for the engines. Not before the first look: what
        #: an engine that just started has taken may still be unread.
        self._caught_up = Since(holding=False)

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
        """One pass; the outbox rows of the re-sends, committed, for the relay to publish.

        While any task is queued, every pass looks at the reports queue (and at the queues of
        the topics with overdue tasks), whether or not anything can be re-sent this time: a
        backlog of reports, or a queue without consumers, seen only by a look skipped while
        the outbox had lapsed rows, would leave a later pass counting that time."""
        async with self._store.session() as db:
            waiting = await db.queued_topics()
            if not waiting:
                return []
            lapsed = await db.outbox_lapsed()
            await self._learn_deadlines(db)
        overdue = {
            row.topic: row.oldest_ms
            for row in waiting
            if row.oldest_ms is not None and row.oldest_ms >= self._floor(row.topic)
        }
        try:
            counts = await queue_counts(self._probe, self._topology, sorted(overdue))
        except Exception as exc:  # the broker is away: nothing can be re-sent anyway
            log.warning("dispatch watch: cannot read the queues: %r", exc)
            return []
        now = asyncio.get_running_loop().time()
        self._caught_up.look(counts.reports_ready == 0, now)
        for topic, (_, consumers) in counts.topics.items():
            self._read.setdefault(topic, Since()).look(consumers > 0, now)
        if lapsed or counts.reports_ready > 0:
            return []  # a message may still be in the outbox, a claim among the reports
        caught_up_for_ms = self._caught_up.for_ms(now)
        published: list[PublishedRow] = []
        for topic, (ready, consumers) in counts.topics.items():
            queue = QueueState(ready, consumers)
            if queue.consumers == 0:
                continue
            read_for_ms = self._read[topic].for_ms(now)
            floor_ms = due_after_ms(self._floor(topic), 0, queue)
            waited_ms = counted_ms(
                overdue[topic], read_for_ms=read_for_ms, caught_up_for_ms=caught_up_for_ms
            )
            if waited_ms < floor_ms:
                continue
            resend = partial(
                self._resend,
                topic=topic,
                floor_ms=floor_ms,
                queue=queue,
                read_for_ms=read_for_ms,
                caught_up_for_ms=caught_up_for_ms,
            )
            published += await self._store.in_transaction(resend, stop=stop)
        return published

    async def _resend(
        self,
        db: Session,
        *,
        topic: str,
        floor_ms: int,
        queue: QueueState,
        read_for_ms: int | None,
        caught_up_for_ms: int | None,
    ) -> list[PublishedRow]:
        uow = UnitOfWork()
        limit = BACKLOG_PASS_LIMIT if queue.backlog else PASS_LIMIT
        records = await db.lock_undispatched_tasks(topic, floor_ms, limit)
        for record in records:
            task = TaskRow.from_record(record)
            node = (await self._context.processes.get(db, record["definition_id"])).nodes[
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
                caught_up_for_ms=caught_up_for_ms,
            )
            info = InstanceInfo.of_record(task.instance_id, record)
            variables = variables_for_task(record, task.id, fetch_list(node))
            apply_task_decision(uow, task, decision, info, variables)
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
        return await db.write(uow)

    def _limits(self, node: object) -> tuple[int, int]:
        """The task's dispatch deadline and how many re-sends it gets."""
        if not isinstance(node, ServiceTask):
            return self._default_ms, self._max_redispatches
        deadline = node.dispatch_timeout_ms or self._default_ms
        most = self._max_redispatches if node.max_redispatches is None else node.max_redispatches
        return deadline, most

    def _floor(self, topic: str) -> int:
        return self._shortest.get(topic, self._default_ms)

    async def _learn_deadlines(self, db: Session) -> None:
        """The shortest deadline of each topic, from the definitions deployed since the last
        look (a definition never changes once deployed)."""
        while True:
            rows = await db.definitions_after(self._definitions_seen, DEFINITIONS_PER_QUERY)
            for definition_id, graph in rows:
                for topic, deadline_ms in _deadlines(graph, self._default_ms):
                    self._shortest[topic] = min(self._shortest.get(topic, deadline_ms), deadline_ms)
                self._definitions_seen = definition_id
            if len(rows) < DEFINITIONS_PER_QUERY:
                return


def _deadlines(graph: dict[str, Any], default_ms: int) -> list[tuple[str, int]]:
    """(topic, dispatch deadline) of each service task of a stored graph."""
    return [
        (node["topic"], node.get("dispatch_timeout") or default_ms)
        for node in graph.get("nodes", ())
        if node.get("type") == "service_task"
    ]
