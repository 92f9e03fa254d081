"""The engine's rounds: each takes the starts and reports that arrived since the last one,
decides them and writes them in as few statements as it can, then answers and acks.

One loop serves a consumer of the commands queue and one of the reports queue (they share
the event that wakes it). When both have work, their starts and completions are decided
together and written in one statement: one round trip and one commit for both, where two
loops took two. At moderate rates, when batches hold a message or two, that halves the
rounds. While PostgreSQL cannot be reached, a loop gives its messages back to the broker
(for engines that can reach it) and stops consuming until it answers again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from orchestrator.broker.batches import BatchConsumer, ack_each
from orchestrator.broker.deadline import split_lapsed
from orchestrator.daemon.commands import OperatorCommands
from orchestrator.daemon.last_written import StaleCopy
from orchestrator.daemon.report_rounds import ReportRounds
from orchestrator.daemon.reports import ReportBatch
from orchestrator.daemon.revocations import revoke_notices
from orchestrator.daemon.round_context import RoundContext, RoundPart
from orchestrator.daemon.sender import Message, replies
from orchestrator.daemon.start_rounds import StartRounds
from orchestrator.daemon.starts import StartBatch
from orchestrator.daemon.supervisor import sleep_or_stop
from orchestrator.faults import crash_point
from orchestrator.model.wire import StartCommand
from orchestrator.store.errors import DatabaseAway, SerializationError, UniqueViolation
from orchestrator.store.unit_of_work import UnitOfWork

log = logging.getLogger(__name__)
#: A consumer of the commands queue and one of the reports queue, served by one loop.
ConsumerPair = tuple[BatchConsumer, BatchConsumer]


class Rounds(RoundPart):
    """The round loops of one engine (one per pair of consumers)."""

    def __init__(self, rounds: RoundContext, commands: OperatorCommands) -> None:
        super().__init__(rounds)
        self._reports = ReportRounds(rounds)
        self._starts = StartRounds(rounds, commands)

    async def serve(
        self, consumers: ConsumerPair, consume_again: Callable[[], Awaitable[ConsumerPair]]
    ) -> None:
        """Serve a pair of consumers until the engine stops. While PostgreSQL cannot be
        reached, their messages are given back and `consume_again` makes a new pair once it
        answers (DESIGN: stop consuming rather than hold or nack-loop)."""
        while not self._stop.is_set():
            try:
                await self._serve(*consumers)
                return
            except DatabaseAway as exc:
                consumers = await self._step_back(consumers, consume_again, exc)

    async def _step_back(
        self,
        consumers: ConsumerPair,
        consume_again: Callable[[], Awaitable[ConsumerPair]],
        exc: DatabaseAway,
    ) -> ConsumerPair:
        log.warning("%s: giving back the messages in hand until it answers again", exc)
        for consumer in consumers:
            await consumer.close()
        delay = 0.2
        while not self._stop.is_set() and not await self._store.answers():
            await sleep_or_stop(self._stop, delay)
            delay = min(delay * 2, 2.0)
        while not self._stop.is_set():
            try:
                consumers = await consume_again()
                log.info("the database answers again: consuming")
                return consumers
            except (Exception, asyncio.CancelledError) as error:
                # The broker may be away too (aiormq cancels the calls of a dead connection).
                current = asyncio.current_task()
                if isinstance(error, asyncio.CancelledError) and current and current.cancelling():
                    raise
                log.warning("could not consume again yet: %r", error)
                await sleep_or_stop(self._stop, 1.0)
        return consumers

    async def _serve(self, commands: BatchConsumer, reports: BatchConsumer) -> None:
        """Each round takes what arrived on either consumer while the last round was
        processed."""
        arrived = commands.arrived
        while await self._wait_for_work(arrived):
            arrived.clear()
            command_batch, lapsed = split_lapsed(commands.take_ready(), time.time() * 1000)
            if lapsed:
                await self._starts.drop_lapsed(lapsed)
            report_batch = reports.take_ready()
            if commands.pending() or reports.pending():
                arrived.set()  # more than a batch was waiting: go again at once
            both = command_batch and report_batch
            if not (
                both and await self._write_starts_and_reports_together(command_batch, report_batch)
            ):
                if report_batch:
                    await self._reports.handle(report_batch)
                if command_batch:
                    await self._starts.handle(command_batch)
            await self._retry_held()
        await commands.stop()
        await reports.stop()

    async def _wait_for_work(self, arrived: asyncio.Event) -> bool:
        """Wait for a message or a held one's next try (True), or for the engine to stop
        (False)."""
        if self._stop.is_set():
            return False
        if arrived.is_set():  # the common case under load: no futures to race
            return True
        getter = asyncio.ensure_future(arrived.wait())
        stopper = asyncio.ensure_future(self._stop.wait())
        await asyncio.wait(
            [getter, stopper],
            timeout=self._next_held_due_in(),
            return_when=asyncio.FIRST_COMPLETED,
        )
        getter.cancel()
        stopper.cancel()
        return not self._stop.is_set()

    def _next_held_due_in(self) -> float | None:
        """Seconds until a held message is due for its next try; None if none is held."""
        dues = [
            due
            for due in (self._reports.held.next_due(), self._starts.held.next_due())
            if due is not None
        ]
        if not dues:
            return None
        return max(0.0, min(dues) - asyncio.get_running_loop().time())

    async def _retry_held(self) -> None:
        """Try the held reports and starts whose pause is over."""
        if not (self._reports.held or self._starts.held):
            return
        now = asyncio.get_running_loop().time()
        await self._reports.retry_held(now)
        await self._starts.retry_held(now)

    async def _write_starts_and_reports_together(
        self, command_batch: list[Message], report_batch: list[Message]
    ) -> bool:
        """Starts and completions of one round in one statement, when every message is a
        well-formed start or report and both can go their one-statement ways (see the
        `run_in_one_statement` of StartBatch and ReportBatch). False, having written nothing,
        when they cannot: the caller then handles each batch on its own, as it would have."""
        commands = [command for _, command in self._starts.parse(command_batch)]
        starts = [command for command in commands if isinstance(command, StartCommand)]
        parsed, dead = self._reports.parse(report_batch)
        items = [item for _, _, item in parsed]
        if len(starts) < len(commands) or dead or len(items) > self._settings.batch_size:
            return False
        copies = self._last_written.copies_for(item.report for item in items)
        if copies is None:
            return False
        uow = UnitOfWork()
        uow.count("rounds_in_one_statement")
        try:
            async with self._store.session() as db:
                start_batch = StartBatch(db, self._context, uow)
                decided = start_batch.decide_for_one_statement(starts)
                reports = ReportBatch(db, self._context, uow=uow)
                reports.decide_for_one_statement(items, copies)
                published = await db.write(uow)
        except Exception as exc:  # nothing was written: each batch goes its own way
            log.debug("round goes two ways: %r", exc)
            if isinstance(exc, SerializationError | UniqueViolation | StaleCopy):
                self._last_written.forget(copies.instances)
            return False
        outcome = reports.written(published)
        self._reports.remember(outcome)
        crash_point("after_commit")
        crash_point("after_start_commit")
        results = StartBatch.results(decided)
        answers = replies(list(zip(command_batch, results, strict=True)))
        revoked = revoke_notices([uow], self._topology)
        await self._sender.send(outcome.publish, outcome.notices + answers + revoked)
        await self._reports.ack(report_batch)
        await ack_each(command_batch)
        return True
