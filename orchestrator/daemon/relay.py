"""The outbox relay: publish committed task messages with confirms, then delete their rows."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from aio_pika.abc import AbstractChannel

from orchestrator.broker.publisher import Outgoing, Publisher, Sent
from orchestrator.broker.topology import (
    COMMAND_ROUTING_KEY,
    OUTBOX_TO_COMMANDS,
    OUTBOX_TO_REPORTS,
    PUBLISHED_AT_HEADER,
    REPORT_ROUTING_KEY,
    Topology,
    declare_task_queue,
)
from orchestrator.daemon.supervisor import wait_for_any
from orchestrator.store.errors import RETRYABLE
from orchestrator.store.store import Store
from orchestrator.store.unit_of_work import OutboxMessage, PublishedRow
from orchestrator.tracing import TRACEPARENT

_ENGINE_ROUTES = frozenset({OUTBOX_TO_REPORTS, OUTBOX_TO_COMMANDS})
log = logging.getLogger(__name__)


class Relay:
    def __init__(
        self,
        store: Store,
        publisher: Publisher,
        declare_channel: AbstractChannel,
        topology: Topology,
    ) -> None:
        self._store = store
        self._publisher = publisher
        self._declare_channel = declare_channel
        self._topology = topology
        self._declared: set[str] = set()
        #: Told of every batch of confirmed rows, with the confirm's time (the metrics).
        self.on_confirmed: Callable[[list[PublishedRow], float], None] | None = None
        #: Rows whose messages the broker confirmed, deleted together every few ms.
        self._confirmed: list[int] = []
        self._have_confirmed = asyncio.Event()

    async def ensure_queues(self, topics: set[str] | frozenset[str]) -> None:
        for topic in sorted(set(topics) - self._declared - _ENGINE_ROUTES):
            await declare_task_queue(self._declare_channel, self._topology, topic)
            self._declared.add(topic)

    def _outgoing(self, message: OutboxMessage, published_at_ms: str) -> Outgoing:
        exchange, routing_key = self._topology.tasks_exchange, message.routing_key
        if routing_key == OUTBOX_TO_REPORTS:
            exchange, routing_key = self._topology.reports_exchange, REPORT_ROUTING_KEY
        elif routing_key == OUTBOX_TO_COMMANDS:
            exchange, routing_key = self._topology.commands_exchange, COMMAND_ROUTING_KEY
        headers = {PUBLISHED_AT_HEADER: published_at_ms}
        if message.traceparent is not None:  # its instance's trace, for the worker and spans
            headers[TRACEPARENT] = message.traceparent
        return Outgoing(
            exchange, routing_key, message.body, message_id=message.message_id, headers=headers
        )

    async def publish(self, rows: list[PublishedRow]) -> int:
        """Publish rows this engine committed and wait for the confirms; rows that fail stay
        for the sweeper. How many rows were confirmed."""
        return await (await self.send(rows)).settle()

    async def send(self, rows: list[PublishedRow], also: Sequence[Outgoing] = ()) -> InFlight:
        """Hand the rows' task messages to the socket now; `InFlight.settle` waits for their
        confirms. `also` (best-effort answers) go in the same write."""
        if rows:
            try:
                await self.ensure_queues({row.message.routing_key for row in rows})
            except Exception as exc:  # broker away: the rows wait in the outbox for the sweeper
                log.warning(
                    "cannot declare task queues (%s); %d rows stay in the outbox", exc, len(rows)
                )
                rows = []
        now_ms = f"{time.time() * 1000:.3f}"
        sent = await self._publisher.send_many(
            [self._outgoing(r.message, now_ms) for r in rows] + list(also)
        )
        return InFlight(self, rows, sent)

    def record_outcomes(self, rows: list[PublishedRow], results: list[BaseException | None]) -> int:
        """Confirmed rows are deleted soon; the rest stay for the sweeper. How many were
        confirmed."""
        results, answered = results[: len(rows)], results[len(rows) :]
        unanswered = [error for error in answered if error is not None]
        if unanswered:  # best effort: workers ask again, clients resend
            log.warning("could not send %d answers: %s", len(unanswered), unanswered[0])
        done = [row for row, error in zip(rows, results, strict=True) if error is None]
        confirmed = [row.id for row in done]
        if self.on_confirmed is not None and done:
            self.on_confirmed(done, time.monotonic())
        failed = len(rows) - len(confirmed)
        if failed:
            first = next(error for error in results if error is not None)
            log.warning(
                "%d of %d task messages not confirmed (%s); the sweeper retries them",
                failed,
                len(rows),
                first,
            )
            self._declared.clear()  # a returned message may mean a deleted queue
        if confirmed:
            self._confirmed += confirmed
            self._have_confirmed.set()
        return len(confirmed)

    async def delete_forever(self, window_s: float, stop: asyncio.Event) -> None:
        """Delete published rows in one statement per `window_s`, not one per batch: a
        commit each (with its WAL flush) cost the database more than the batches did. A row
        not yet deleted when its claim lapses is published again; consumers dedupe."""
        while not stop.is_set():
            await wait_for_any(stop, None, self._have_confirmed)
            await wait_for_any(stop, window_s)
            if not await self.delete_confirmed():
                await wait_for_any(stop, 1.0)  # the database is away: do not spin
        await self.delete_confirmed()

    async def delete_confirmed(self) -> bool:
        """Delete the rows published so far; False if the database was away (kept for later)."""
        self._have_confirmed.clear()
        ids, self._confirmed = self._confirmed, []
        if not ids:
            return True
        try:
            await self._store.delete_outbox(ids)
        except RETRYABLE as exc:  # kept for the next round; the sweep may republish them
            log.warning("could not delete %d published outbox rows: %s", len(ids), exc)
            self._confirmed = ids + self._confirmed
            self._have_confirmed.set()
            return False
        return True

    @property
    def task_topics(self) -> frozenset[str]:
        """The task queues' topics this engine declared."""
        return frozenset(self._declared)

    async def sweep_once(self, limit: int = 500) -> int:
        """Publish rows whose committing engine did not (it died, or the broker was away)."""
        rows = await self._store.claim_lapsed_outbox(limit)
        if rows:
            log.info("relay: republishing %d outbox rows", len(rows))
        return await self.publish(rows)

    async def sweep_forever(self, interval: float, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                while await self.sweep_once() > 0:
                    pass
            except RETRYABLE as exc:
                log.warning("relay sweep: database unavailable: %s", exc)
            await wait_for_any(stop, interval)


class InFlight:
    """Outbox rows (and answers) handed to the socket, their confirms still to come."""

    def __init__(self, relay: Relay, rows: list[PublishedRow], sent: Sent) -> None:
        self._relay = relay
        self._rows = rows
        self._sent = sent

    async def settle(self) -> int:
        """Wait for the confirms; confirmed rows are deleted soon, the rest stay for the
        sweeper. How many rows were confirmed."""
        return self._relay.record_outcomes(self._rows, await self._sent.outcomes())
