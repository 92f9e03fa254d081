"""The engine daemon: consumers, relay, reaper, supervised together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from typing import Any, NamedTuple

import orjson
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from orchestrator import aio
from orchestrator.broker.batches import BatchConsumer, ack_all, ack_each
from orchestrator.broker.connection import connect
from orchestrator.broker.deadline import split_lapsed
from orchestrator.broker.publisher import Outgoing, Publisher
from orchestrator.broker.topology import DEAD_REASON_HEADER, Topology, declare_core
from orchestrator.config import Settings
from orchestrator.daemon import admin, operations
from orchestrator.daemon.context import EngineContext
from orchestrator.daemon.definitions import DefinitionCache
from orchestrator.daemon.dispatch import DispatchWatch
from orchestrator.daemon.held import Held, HeldMessages
from orchestrator.daemon.last_written import LastWrittenRows, RowCopies, StaleCopy
from orchestrator.daemon.parsing import Malformed, parse_command, parse_reports
from orchestrator.daemon.reaper import reap_once
from orchestrator.daemon.relay import Relay
from orchestrator.daemon.reports import BatchOutcome, IncomingReport, Notice, ReportBatch
from orchestrator.daemon.starts import StartBatch, StartResult
from orchestrator.daemon.supervisor import supervise
from orchestrator.errors import (
    CommandTimeout,
    InvalidCommand,
    OrchestratorError,
    ServiceUnavailable,
)
from orchestrator.faults import crash_point
from orchestrator.model.wire import (
    CancelCommand,
    Command,
    CommandError,
    CommandReply,
    DeployCommand,
    GetInstanceCommand,
    ListIncidentsCommand,
    RetryCommand,
    StartCommand,
    StatsCommand,
)
from orchestrator.store.errors import (
    RETRYABLE,
    DatabaseAway,
    DataError,
    LockBusy,
    NeedsLocks,
    SerializationError,
    UniqueViolation,
)
from orchestrator.store.store import Session, Store
from orchestrator.store.unit_of_work import UnitOfWork

log = logging.getLogger(__name__)
Message = AbstractIncomingMessage
#: A report with the message that carried it and its own bytes (for a dead letter).
ReportItem = tuple[Message, bytes, IncomingReport]
HeldReport = tuple[bytes, IncomingReport]


CommandResult = dict[str, Any] | OrchestratorError
#: How long an operator action waits for an instance's lock (a round holds it for
#: milliseconds; a stalled engine for up to its idle-in-transaction timeout).
OPERATOR_LOCK_TIMEOUT_MS = 2_000


def _reply_of(result: CommandResult) -> CommandReply:
    if isinstance(result, OrchestratorError):
        return CommandReply(ok=False, error=CommandError(code=result.code, message=str(result)))
    return CommandReply(ok=True, result=result)


class DeadLetter(NamedTuple):
    message: Message
    reason: str
    body: bytes


class Engine:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topology = Topology(settings.namespace)
        self.stop = asyncio.Event()
        self.processes = DefinitionCache()
        self.engine_id = f"engine-{socket.gethostname()}-{os.getpid()}"
        self.context = EngineContext(self.processes)
        self.last_written = LastWrittenRows(settings.recent_instances)
        self._store: Store | None = None
        self._connection: AbstractRobustConnection | None = None
        self._publisher: Publisher | None = None
        self._relay: Relay | None = None
        self._reports: list[BatchConsumer] = []
        self._commands: list[BatchConsumer] = []
        #: Operator commands being answered beside the rounds (see `_answer_aside`).
        self._aside: set[asyncio.Task[None]] = set()
        #: Publishing of committed batches, overlapping the next batch (bounded).
        self._post_commit: set[asyncio.Task[int]] = set()
        self._post_commit_slots = asyncio.Semaphore(8)
        #: How long a round retries an unreachable database before it gives its messages back.
        self._give_back_s = settings.db_give_back_after_ms / 1000
        #: Reports and starts waiting for rows another session has locked (see held.py).
        self._held_reports: HeldMessages[HeldReport] = HeldMessages()
        self._held_starts: HeldMessages[StartCommand] = HeldMessages()

    # --- lifecycle -----------------------------------------------------------------------

    async def run(self) -> None:
        await self.open()
        try:
            await supervise(
                {
                    **{f"rounds-{i}": self._rounds(i) for i in range(len(self._commands))},
                    "reaper": self._reaper_loop(),
                    "dispatch-watch": DispatchWatch(
                        self.store, self.connection, self.relay, self.context, self.settings
                    ).run(self.stop),
                    "relay-sweeper": self.relay.sweep_forever(0.5, self.stop),
                    "relay-deleter": self.relay.delete_forever(0.02, self.stop),
                },
                self.stop,
            )
        finally:
            await self.close()

    async def open(self) -> None:
        settings = self.settings
        self._store = await Store.open(
            settings.database_url,
            engine_id=self.engine_id,
            outbox_claim_ms=settings.outbox_claim_ms,
            size=settings.pool_size,
            limits=settings.session_limits(),
            application_name=f"orchestrator {self.engine_id}",
        )
        async with self.store.session() as db:
            await db.migrate()
            topics = await admin.deployed_topics(db)
            if not await db.autovacuum_on():
                log.warning(
                    "autovacuum is off on this PostgreSQL server: the dead rows every task "
                    "leaves in the outbox and task tables will pile up; turn it on"
                )
        self._connection = await connect(settings.amqp_url, name=self.engine_id)
        setup = await self._connection.channel()
        await declare_core(setup, self.topology)
        self._publisher = await Publisher.open(self._connection)
        self._relay = Relay(self.store, self._publisher, setup, self.topology)
        await self.relay.ensure_queues(topics)
        # One loop serves a consumer of each queue (see `_rounds`). Several such loops, each
        # with its own channels: while one round waits on PostgreSQL the next is already
        # being read and decided. A channel's acks (multiple=True) then only ever cover its
        # own loop's committed batches.
        for _ in range(settings.consumers_per_queue):
            commands, reports = await self._consumer_pair()
            self._commands.append(commands)
            self._reports.append(reports)
        log.info("engine %s started (namespace %s)", self.engine_id, settings.namespace)

    async def _consumer_pair(self) -> tuple[BatchConsumer, BatchConsumer]:
        """A consumer of the commands queue and one of the reports queue, served by one loop
        (they share the event that wakes it)."""
        arrived = asyncio.Event()
        reports = await self._consumer(
            self.topology.reports_queue, self.settings.report_messages_per_batch, arrived
        )
        commands = await self._consumer(self.topology.commands_queue, 200, arrived)
        return commands, reports

    async def _consumer(
        self, queue_name: str, batch_size: int, arrived: asyncio.Event
    ) -> BatchConsumer:
        channel = await self.connection.channel()
        await channel.set_qos(prefetch_count=batch_size * 2)
        # Declared (not just looked up) so the robust channel restores the consumer after a
        # broker restart; the declaration is idempotent.
        queue = await channel.declare_queue(
            queue_name, durable=True, arguments=self.topology.queue_arguments()
        )
        consumer = BatchConsumer(queue, max_batch=batch_size, arrived=arrived, channel=channel)
        await consumer.start()
        return consumer

    async def close(self) -> None:
        if self._aside:
            await asyncio.wait(self._aside, timeout=10)
        if self._post_commit:
            await asyncio.wait(self._post_commit, timeout=10)
        if self._relay is not None:  # what the last batches published, so no sweep resends it
            await self._relay.delete_confirmed()
        if self._connection is not None:
            await self._connection.close()
        if self._store is not None:
            await self._store.close()
        log.info("engine %s stopped", self.engine_id)

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stop.set)

    @property
    def store(self) -> Store:
        if self._store is None:
            raise RuntimeError("engine is not open")
        return self._store

    @property
    def connection(self) -> AbstractRobustConnection:
        if self._connection is None:
            raise RuntimeError("engine is not open")
        return self._connection

    @property
    def publisher(self) -> Publisher:
        if self._publisher is None:
            raise RuntimeError("engine is not open")
        return self._publisher

    @property
    def relay(self) -> Relay:
        if self._relay is None:
            raise RuntimeError("engine is not open")
        return self._relay

    # --- loops ---------------------------------------------------------------------------

    async def _rounds(self, index: int) -> None:
        """Serve the `index`th pair of consumers. While PostgreSQL cannot be reached, their
        messages are given back to the broker (for engines that can reach it) and consuming
        pauses until it answers again (DESIGN: stop consuming rather than hold or nack-loop)."""
        while not self.stop.is_set():
            try:
                await self._serve_rounds(self._commands[index], self._reports[index])
                return
            except DatabaseAway as exc:
                await self._step_back(index, exc)

    async def _step_back(self, index: int, exc: DatabaseAway) -> None:
        log.warning("%s: giving back the messages in hand until it answers again", exc)
        await self._commands[index].close()
        await self._reports[index].close()
        delay = 0.2
        while not self.stop.is_set() and not await self.store.answers():
            await _sleep_or_stop(self.stop, delay)
            delay = min(delay * 2, 2.0)
        while not self.stop.is_set():
            try:
                self._commands[index], self._reports[index] = await self._consumer_pair()
                log.info("the database answers again: consuming")
                return
            except (Exception, asyncio.CancelledError) as error:
                # The broker may be away too (aiormq cancels the calls of a dead connection).
                current = asyncio.current_task()
                if isinstance(error, asyncio.CancelledError) and current and current.cancelling():
                    raise
                log.warning("could not consume again yet: %r", error)
                await _sleep_or_stop(self.stop, 1.0)

    async def _serve_rounds(self, commands: BatchConsumer, reports: BatchConsumer) -> None:
        """One loop for a commands consumer and a reports consumer. Each round takes what
        arrived on either while the last round was processed. When both have work, their
        starts and completions are decided together and written in one statement (see
        `_handle_both`): one round trip and one commit for both, where two loops took two.
        At moderate rates, when batches hold a message or two, that halves the rounds."""
        arrived = commands.arrived
        while await self._until(arrived):
            arrived.clear()
            command_batch, lapsed = split_lapsed(commands.take_ready(), time.time() * 1000)
            if lapsed:
                await self._drop_lapsed(lapsed)
            report_batch = reports.take_ready()
            if commands.pending() or reports.pending():
                arrived.set()  # more than a batch was waiting: go again at once
            both = command_batch and report_batch
            if not (both and await self._handle_both(command_batch, report_batch)):
                if report_batch:
                    await self._handle_reports(report_batch)
                if command_batch:
                    await self._handle_commands(command_batch)
            await self._retry_held()
        await commands.stop()
        await reports.stop()

    async def _until(self, arrived: asyncio.Event) -> bool:
        """Wait for a message or a held one's next try (True), or for the engine to stop
        (False)."""
        if self.stop.is_set():
            return False
        if arrived.is_set():  # the common case under load: no futures to race
            return True
        getter = asyncio.ensure_future(arrived.wait())
        stopper = asyncio.ensure_future(self.stop.wait())
        await asyncio.wait(
            [getter, stopper], timeout=self._until_held(), return_when=asyncio.FIRST_COMPLETED
        )
        getter.cancel()
        stopper.cancel()
        return not self.stop.is_set()

    async def _reaper_loop(self) -> None:
        interval = self.settings.reaper_interval_ms / 1000
        prune_every = max(1, int(60 / interval))
        rounds = 0
        while not self.stop.is_set():
            rows: list[Any] = []
            try:
                rows = await self.store.in_transaction(self._reap, stop=self.stop)
                await self.relay.publish(rows)
                rounds += 1
                if rounds % prune_every == 0:
                    await self.store.prune_start_ledger(self.settings.start_key_retention_days)
            except RETRYABLE as exc:
                log.warning("reaper: %s", exc)
            if not rows_left(rows):
                await _sleep_or_stop(self.stop, interval)

    async def _reap(self, db: Session) -> list[Any]:
        return await reap_once(db, self.context, limit=500)

    # --- reports -------------------------------------------------------------------------

    def _parse_reports(self, batch: list[Message]) -> tuple[list[ReportItem], list[DeadLetter]]:
        """Each report of the batch with its message and raw bytes; what is malformed, dead."""
        items: list[ReportItem] = []
        dead: list[DeadLetter] = []
        for message in batch:
            try:
                parsed = parse_reports(message.body, self.settings.max_report_bytes)
            except Malformed as exc:
                dead.append(DeadLetter(message, str(exc), message.body))
                continue
            for one in parsed:
                if one.report is None:
                    dead.append(DeadLetter(message, one.reason or "malformed", one.raw))
                else:
                    items.append((message, one.raw, IncomingReport(one.report, message.reply_to)))
        return items, dead

    async def _handle_reports(self, batch: list[Message]) -> None:
        began = time.perf_counter()
        items, dead = self._parse_reports(batch)
        parsed_at = time.perf_counter()
        await self._apply_and_settle(batch, items, dead, {})
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "report batch: %d messages, %d reports; parse %.2f ms, the rest %.2f ms",
                len(batch),
                len(items),
                (parsed_at - began) * 1000,
                (time.perf_counter() - parsed_at) * 1000,
            )

    async def _apply_and_settle(
        self,
        messages: list[Message],
        items: list[ReportItem],
        dead: list[DeadLetter],
        held: dict[int, Held[HeldReport]],
    ) -> None:
        """Apply the reports; dead-letter, answer and ack what is done; hold the messages
        whose reports wait for an instance another engine has locked (`held`: those already
        held before, by message)."""
        outcome = await self._apply_in_chunks([item for _, _, item in items])
        for index, reason in outcome.dead.items():
            message, raw, _ = items[index]
            dead.append(DeadLetter(message, reason, raw))
        crash_point("after_commit")
        await self._dead_letter(dead, self.topology.reports_queue)
        # Committed: the task messages are safe in the outbox, and the reports can go. The
        # publishing starts first (the next step waits for it) and overlaps the next batch
        # instead of holding it up for the confirms.
        await self._after_commit(outcome.publish, outcome.notices)
        still_held = self._hold_reports(items, outcome.deferred, held)
        await self._ack_reports([m for m in messages if id(m) not in still_held])

    def _hold_reports(
        self, items: list[ReportItem], deferred: set[int], held: dict[int, Held[HeldReport]]
    ) -> set[int]:
        """Set aside each message with its deferred reports; the ids of the messages held."""
        again: dict[int, Held[HeldReport]] = {}
        for index in sorted(deferred):
            message, raw, item = items[index]
            entry = again.get(id(message))
            if entry is None:
                entry = held.get(id(message)) or Held(message, [])
                entry.items = []
                again[id(message)] = entry
            entry.items.append((raw, item))
        now = asyncio.get_running_loop().time()
        for entry in again.values():
            self._held_reports.hold(entry, now)
        if again:
            log.debug("%d reports wait for instances another session has locked", len(deferred))
        return set(again)

    async def _ack_reports(self, messages: list[Message]) -> None:
        """One multiple-ack per channel, unless messages are held: a multiple-ack would
        settle them too."""
        if self._held_reports:
            await ack_each(messages)
        else:
            await ack_all(messages)

    def _until_held(self) -> float | None:
        """Seconds until a held message is due for its next try; None if none is held."""
        dues = [
            due
            for due in (self._held_reports.next_due(), self._held_starts.next_due())
            if due is not None
        ]
        if not dues:
            return None
        return max(0.0, min(dues) - asyncio.get_running_loop().time())

    async def _retry_held(self) -> None:
        """Try the held reports and starts whose pause is over."""
        now = asyncio.get_running_loop().time()
        reports = self._held_reports.take_due(now)
        if reports:
            items = [(h.message, raw, item) for h in reports for raw, item in h.items]
            held = {id(h.message): h for h in reports}
            await self._apply_and_settle([h.message for h in reports], items, [], held)
        starts = self._held_starts.take_due(now)
        fresh, lapsed = split_lapsed([h.message for h in starts], time.time() * 1000)
        if lapsed:  # held past their sender's deadline: they take no effect after all
            await self._drop_lapsed(lapsed)
            starts = [h for h in starts if any(h.message is m for m in fresh)]
        if starts:
            await self._run_starts([(h.message, h.items[0]) for h in starts], [], held=starts)

    async def _handle_both(self, command_batch: list[Message], report_batch: list[Message]) -> bool:
        """Starts and completions of one round in one statement, when every message is a
        well-formed start or report and both can go their one-statement ways (see the
        `run_in_one_statement` of StartBatch and ReportBatch). False, having written nothing,
        when they cannot: the caller then handles each batch on its own, as it would have."""
        commands = [command for _, command in self._parse_commands(command_batch)]
        starts = [command for command in commands if isinstance(command, StartCommand)]
        parsed, dead = self._parse_reports(report_batch)
        items = [item for _, _, item in parsed]
        if len(starts) < len(commands) or dead or len(items) > self.settings.batch_size:
            return False
        view = self.last_written.copies_for(item.report for item in items)
        if view is None:
            return False
        uow = UnitOfWork()
        uow.count("rounds_in_one_statement")
        try:
            async with self.store.session() as db:
                start_batch = StartBatch(db, self.context, uow)
                decided = start_batch.decide_for_one_statement(starts)
                reports = ReportBatch(db, self.context, uow=uow)
                reports.decide_for_one_statement(items, view)
                published = await db.write(uow)
        except Exception as exc:  # nothing was written: each batch goes its own way
            log.debug("round goes two ways: %r", exc)
            if isinstance(exc, SerializationError | UniqueViolation | StaleCopy):
                self.last_written.forget(view.instances)
            return False
        outcome = reports.written(published)
        self._remember(outcome)
        crash_point("after_commit")
        crash_point("after_start_commit")
        results = StartBatch.results(decided)
        replies = self._replies(list(zip(command_batch, results, strict=True)))
        await self._after_commit(outcome.publish, outcome.notices + replies)
        await self._ack_reports(report_batch)
        await ack_each(command_batch)
        return True

    async def _after_commit(self, rows: list[Any], notices: list[Notice]) -> None:
        """Hand a committed round's task messages and answers (replies, notices) to the
        socket now, in one write, before the next round starts (the next step waits for
        them); wait for their confirms beside the loop."""
        if not rows and not notices:
            return
        await self._post_commit_slots.acquire()
        try:
            in_flight = await self.relay.send(rows, also=[_answer_message(n) for n in notices])
        except BaseException:
            self._post_commit_slots.release()
            raise
        task = asyncio.create_task(in_flight.settle())
        self._post_commit.add(task)
        task.add_done_callback(self._post_commit_done)

    def _post_commit_done(self, task: asyncio.Task[int]) -> None:
        self._post_commit.discard(task)
        self._post_commit_slots.release()
        if not task.cancelled() and task.exception() is not None:
            # The rows stay in the outbox; the sweeper publishes them.
            log.error("publishing after commit failed: %r", task.exception())

    async def _apply_reports(self, items: list[IncomingReport]) -> BatchOutcome:
        """Apply in one transaction; if that fails for a reason other than the database being
        away, split the batch to isolate the report that causes it and dead-letter that one."""
        if not items:
            return BatchOutcome()
        stale = False
        view = self.last_written.copies_for(item.report for item in items)
        if view is not None:
            outcome = await self._apply_from_recent(items, view)
            if isinstance(outcome, BatchOutcome):
                return outcome
            stale = outcome

        async def work(db: Session) -> BatchOutcome:
            batch = ReportBatch(db, self.context, stale_copies=stale)
            return await batch.run(items)

        try:
            outcome = await self.store.in_transaction(
                work, stop=self.stop, give_up_after_s=self._give_back_s
            )
            self._remember(outcome)
            return outcome
        except RETRYABLE:
            raise
        except Exception as exc:
            if len(items) <= 1:
                log.exception("report could not be applied; dead-lettering it")
                return BatchOutcome(dead={0: f"engine error: {type(exc).__name__}: {exc}"})
        middle = len(items) // 2
        first = await self._apply_reports(items[:middle])
        return first.merge(await self._apply_reports(items[middle:]), offset=middle)

    async def _apply_from_recent(
        self, items: list[IncomingReport], view: RowCopies
    ) -> BatchOutcome | bool:
        """The one-round-trip path (see LastWrittenRows). If the batch must go the locked way after
        all, whether that is because a row changed since this engine wrote it."""
        try:
            async with self.store.session() as db:
                outcome = await ReportBatch(db, self.context).run_in_one_statement(items, view)
        except Exception as exc:  # the locked path retries, waits or dead-letters as needed
            log.debug("batch goes the locked way: %r", exc)
            self.last_written.forget(view.instances)
            # A stale copy fails on a version, or on a task id the newer state already used,
            # or (StaleCopy) before writing, on a task its state does not wait on.
            return isinstance(exc, SerializationError | UniqueViolation | StaleCopy)
        self._remember(outcome)
        return outcome

    def _remember(self, outcome: BatchOutcome) -> None:
        for uow, instances in outcome.written:
            self.last_written.remember(uow, instances)

    async def _apply_in_chunks(self, items: list[IncomingReport]) -> BatchOutcome:
        """A few messages can carry thousands of reports (workers batch them): keep each
        transaction, and what it holds in memory, to at most batch_size reports."""
        size = self.settings.batch_size
        outcome = BatchOutcome()
        for start in range(0, len(items), size):
            outcome.merge(await self._apply_reports(items[start : start + size]), offset=start)
        return outcome

    async def _dead_letter(self, dead: list[DeadLetter], source: str) -> None:
        """Publish each to the dead exchange with its reason, and count them (outside the
        batch's transaction, which may be the very thing that failed)."""
        if not dead:
            return
        counter = (
            "reports_dead_lettered"
            if source == self.topology.reports_queue
            else ("commands_dead_lettered")
        )
        try:
            await self.store.bump_counter(counter, len(dead))
        except RETRYABLE as exc:
            log.warning("could not count %d dead letters: %s", len(dead), exc)
        for message, reason, body in dead:
            log.warning("dead-lettering a message from %s: %s", source, reason)
            headers = {DEAD_REASON_HEADER: reason[:1000], "x-orch-source-queue": source}
            try:
                await self.publisher.publish(
                    Outgoing(
                        self.topology.dead_exchange,
                        "",
                        body,
                        message_id=message.message_id,
                        headers=headers,
                        mandatory=False,
                    )
                )
            except Exception:  # let the queue's own dead-letter exchange take it instead
                log.exception("could not publish a dead letter; rejecting it to the DLX")
                with contextlib.suppress(Exception):
                    await message.reject(requeue=False)

    # --- commands ------------------------------------------------------------------------

    async def _drop_lapsed(self, lapsed: list[tuple[Message, str]]) -> None:
        """Commands whose sender's deadline passed before they arrived (the sender gave up on
        them: see orchestrator/broker/deadline.py) take no effect. Each is answered, in case
        its sender still listens (a clock behind the engine's), counted and acked."""
        log.warning("dropped %d commands past their deadline: %s", len(lapsed), lapsed[0][1])
        try:
            await self.store.bump_counter("commands_expired", len(lapsed))
        except RETRYABLE as exc:
            log.warning("could not count %d expired commands: %s", len(lapsed), exc)
        answers: list[tuple[Message, CommandResult]] = [
            (message, CommandTimeout(reason)) for message, reason in lapsed
        ]
        await self._after_commit([], self._replies(answers))
        await ack_each([message for message, _ in lapsed])

    async def _handle_commands(self, batch: list[Message]) -> None:
        """Starts in one go; anything else is answered beside the loop (see `_answer_aside`).
        This channel's deliveries are therefore acked one by one, never with `multiple`."""
        starts: list[tuple[Message, StartCommand]] = []
        answers: list[tuple[Message, CommandResult]] = []
        dead: list[DeadLetter] = []
        settled: list[Message] = []
        for message, command in self._parse_commands(batch):
            if isinstance(command, Malformed):
                answers.append((message, InvalidCommand(str(command))))
                dead.append(DeadLetter(message, str(command), message.body))
                settled.append(message)
                continue
            if isinstance(command, StartCommand):
                starts.append((message, command))
                settled.append(message)
            else:
                self._answer_aside(message, command)
        await self._dead_letter(dead, self.topology.commands_queue)
        await self._run_starts(starts, answers, settled=settled)

    async def _run_starts(
        self,
        starts: list[tuple[Message, StartCommand]],
        answers: list[tuple[Message, CommandResult]],
        *,
        settled: list[Message] | None = None,
        held: list[Held[StartCommand]] | None = None,
    ) -> None:
        """Run the starts; answer and ack them with `answers` and `settled`, except those that
        need a key another session has locked: those are held and tried again shortly."""
        settled = list(settled or [])
        earlier = {id(h.message): h for h in held or []}
        rows: list[Any] = []
        held_now: set[int] = set()
        if starts:
            results, rows = await self._start_all([command for _, command in starts])
            now = asyncio.get_running_loop().time()
            for (message, command), result in zip(starts, results, strict=True):
                if result is None:
                    entry = earlier.get(id(message)) or Held(message, [command])
                    self._held_starts.hold(entry, now)
                    held_now.add(id(message))
                    continue
                answers.append((message, result))
                if id(message) in earlier:
                    settled.append(message)
        await self._after_commit(rows, self._replies(answers))
        await ack_each([m for m in settled if id(m) not in held_now])

    def _parse_commands(self, batch: list[Message]) -> list[tuple[Message, Command | Malformed]]:
        parsed: list[tuple[Message, Command | Malformed]] = []
        for message in batch:
            try:
                parsed.append(
                    (message, parse_command(message.body, self.settings.max_report_bytes))
                )
            except Malformed as exc:
                parsed.append((message, exc))
        return parsed

    def _answer_aside(self, message: Message, command: Command) -> None:
        """An operator's command (a deploy, a query over many rows) must not hold up the
        rounds of starts and completions: it runs in a task of its own."""
        task = asyncio.create_task(self._answer_and_ack(message, command))
        self._aside.add(task)
        task.add_done_callback(self._aside.discard)

    async def _answer_and_ack(self, message: Message, command: Command) -> None:
        try:
            answer = await self._answer(command)
        except Exception as exc:  # answered, not left unacked: the client would wait in vain
            log.exception("command %s failed", command.type)
            answer = OrchestratorError(f"engine error: {type(exc).__name__}: {exc}")
        await self._after_commit([], self._replies([(message, answer)]))
        await ack_each([message])

    async def _start_all(
        self, commands: list[StartCommand]
    ) -> tuple[list[StartResult | None], list[Any]]:
        """The results (None: held, see `_start_locked`), and the committed outbox rows the
        caller is to publish (with the replies, in one go); the locked way publishes each
        part's rows itself."""
        known = await self._start_known(commands)
        if known is not None:
            results, rows = known
            return list(results), rows
        return await self._start_locked(commands), []

    async def _start_known(
        self, commands: list[StartCommand]
    ) -> tuple[list[StartResult], list[Any]] | None:
        """The one-statement start (see StartBatch.run_in_one_statement); None: go the
        locked way."""
        try:
            async with self.store.session() as db:
                results, rows, uow = await StartBatch(db, self.context).run_in_one_statement(
                    commands
                )
        except NeedsLocks:
            return None
        except Exception as exc:  # the locked way retries, waits or reports as needed
            log.debug("starts go the locked way: %r", exc)
            return None
        self._started(uow)
        return results, rows

    async def _start_locked(self, commands: list[StartCommand]) -> list[StartResult | None]:
        """Starts the locked way, split until what fails is isolated. None for a start that
        needs a key (idempotency or business key) another session holds uncommitted."""

        async def work(db: Session) -> tuple[list[StartResult], list[Any], UnitOfWork]:
            return await StartBatch(db, self.context).run(commands)

        try:
            results, rows, uow = await self.store.in_transaction(
                work, stop=self.stop, give_up_after_s=self._give_back_s
            )
        except RETRYABLE:
            raise
        except Exception as exc:
            if len(commands) == 1:
                if isinstance(exc, LockBusy):
                    return [None]
                log.exception("start failed")
                return [OrchestratorError(f"start failed: {type(exc).__name__}: {exc}")]
            middle = len(commands) // 2
            return await self._start_locked(commands[:middle]) + await self._start_locked(
                commands[middle:]
            )
        self._started(uow)
        await self._after_commit(rows, [])
        return [*results]

    def _started(self, uow: UnitOfWork) -> None:
        """After a start batch committed, either way: keep its rows for the next round."""
        crash_point("after_start_commit")
        self.last_written.remember(uow, {})

    async def _answer(self, command: Command) -> dict[str, Any] | OrchestratorError:
        try:
            if isinstance(command, DeployCommand):
                result, process = await admin.deploy(self.store, command.source)
                await self.relay.ensure_queues(process.topics)
                return result
            if isinstance(command, RetryCommand | CancelCommand):
                return await self._operate(command)
            # A read over many rows may take longer than a round's statement. It takes no
            # row locks; only DDL (a migration) makes it wait, and not for long.
            async with self.store.transaction(
                readonly=True, lock_timeout_ms=30_000, statement_timeout_ms=60_000
            ) as db:
                if isinstance(command, GetInstanceCommand):
                    return await admin.describe_instance(db, command.instance_id)
                if isinstance(command, StatsCommand):
                    return await admin.stats(db, command.process_key)
                if isinstance(command, ListIncidentsCommand):
                    return await operations.list_incidents(db, command)
        except OrchestratorError as exc:
            return exc
        except (DataError, ValueError) as exc:
            return InvalidCommand(str(exc))
        except RETRYABLE as exc:  # the client resends; the engine keeps running
            return ServiceUnavailable(f"database unavailable: {exc}")
        except LockBusy:
            return ServiceUnavailable(
                "the instance is locked by another engine's session (a stalled engine?); "
                f"PostgreSQL ends a stalled session within "
                f"{self.settings.db_idle_in_transaction_timeout_ms / 1000:g} s: try again"
            )
        return InvalidCommand(f"unsupported command {command.type}")

    async def _operate(self, command: RetryCommand | CancelCommand) -> dict[str, Any]:
        """An operator action: one transaction, then its task messages and notices."""
        # Waits for a round of a healthy engine, not for a stalled one (LockBusy).
        async with self.store.transaction(
            lock_timeout_ms=OPERATOR_LOCK_TIMEOUT_MS, statement_timeout_ms=30_000
        ) as db:
            if isinstance(command, RetryCommand):
                done = await operations.retry(db, self.context, command)
            else:
                done = await operations.cancel(db, self.context, command, self.topology)
        await self._after_commit(done.publish, done.notices)
        return done.result

    def _replies(self, answers: list[tuple[Message, CommandResult]]) -> list[Notice]:
        """The replies to commands, sent after the round without holding up the next one
        for their confirms: a lost reply is resent by the client (starts are idempotent),
        so the loop need not wait to know it arrived."""
        return [
            Notice(
                message.reply_to,
                orjson.dumps(_reply_of(result).model_dump(mode="json")),
                correlation_id=message.correlation_id,
            )
            for message, result in answers
            if message.reply_to
        ]


def _answer_message(notice: Notice) -> Outgoing:
    """Replies and notices are best effort (workers ask again, clients resend): neither
    persistent nor mandatory."""
    return Outgoing(
        "",
        notice.reply_to,
        notice.body,
        correlation_id=notice.correlation_id,
        persistent=False,
        mandatory=False,
    )


def rows_left(rows: list[Any]) -> bool:
    """A full reaper pass means more may be due: go again without sleeping."""
    return len(rows) >= 500


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


def run_engine(settings: Settings) -> None:
    async def main() -> None:
        engine = Engine(settings)
        engine.install_signal_handlers()
        await engine.run()

    aio.run(main())
