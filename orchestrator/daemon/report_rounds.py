"""The reports' side of a round: parse the report messages, apply their reports, then
dead-letter, answer, hold or ack each message.

A batch goes in one autocommit statement when it can be decided from the rows this engine
last wrote (see LastWrittenRows), else in a transaction under row locks; one that fails for
a reason other than the database being away is split until the faulty report is isolated
and dead-lettered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from orchestrator import tracing
from orchestrator.broker.batches import ack_all, ack_each
from orchestrator.daemon.held import Held, HeldMessages
from orchestrator.daemon.last_written import RowCopies, StaleCopy
from orchestrator.daemon.parsing import Malformed, parse_reports
from orchestrator.daemon.reports import BatchOutcome, IncomingReport, ReportBatch
from orchestrator.daemon.revocations import revoke_notices
from orchestrator.daemon.round_context import RoundContext, RoundPart
from orchestrator.daemon.sender import DeadLetter, Message
from orchestrator.faults import crash_point
from orchestrator.store.errors import RETRYABLE, SerializationError, UniqueViolation
from orchestrator.store.store import Session

log = logging.getLogger(__name__)
#: A report with the message that carried it and its own bytes (for a dead letter).
ReportItem = tuple[Message, bytes, IncomingReport]
HeldReport = tuple[bytes, IncomingReport]


def _round_span(
    batch: list[Message], items: list[ReportItem]
) -> contextlib.AbstractContextManager[Any]:
    """With OpenTelemetry, a span of the round, linked to the trace of each report it
    applies (a report's own traceparent, else its message's header): a round serves many
    instances, so it belongs to none of their traces."""
    if not tracing.enabled():
        return contextlib.nullcontext()
    traceparents = (
        item.report.traceparent or tracing.header_traceparent(message.headers)
        for message, _, item in items
    )
    return tracing.span(
        "orchestrator report round",
        links=tracing.links_to(traceparents),
        attributes={"orchestrator.messages": len(batch), "orchestrator.reports": len(items)},
    )


class ReportRounds(RoundPart):
    """The report messages of every round loop of the engine (the held ones are the
    engine's, not a loop's)."""

    def __init__(self, rounds: RoundContext) -> None:
        super().__init__(rounds)
        #: Reports waiting for rows another session has locked (see held.py).
        self.held: HeldMessages[HeldReport] = HeldMessages()

    def parse(self, batch: list[Message]) -> tuple[list[ReportItem], list[DeadLetter]]:
        """Each report of the batch with its message and raw bytes; what is malformed, dead."""
        items: list[ReportItem] = []
        dead: list[DeadLetter] = []
        for message in batch:
            try:
                parsed = parse_reports(message.body, self._settings.max_report_bytes)
            except Malformed as exc:
                dead.append(DeadLetter(message, str(exc), message.body))
                continue
            for one in parsed:
                if one.report is None:
                    dead.append(DeadLetter(message, one.reason or "malformed", one.raw))
                else:
                    items.append((message, one.raw, IncomingReport(one.report, message.reply_to)))
        return items, dead

    async def handle(self, batch: list[Message]) -> None:
        began = time.perf_counter()
        items, dead = self.parse(batch)
        parsed_at = time.perf_counter()
        with _round_span(batch, items):
            await self._apply_and_settle(batch, items, dead, {})
        self._context.metrics.round(len(items), time.perf_counter() - began)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "report batch: %d messages, %d reports; parse %.2f ms, the rest %.2f ms",
                len(batch),
                len(items),
                (parsed_at - began) * 1000,
                (time.perf_counter() - parsed_at) * 1000,
            )

    async def retry_held(self, now: float) -> None:
        """Try the held reports whose pause is over."""
        reports = self.held.take_due(now)
        if reports:
            items = [(h.message, raw, item) for h in reports for raw, item in h.items]
            held = {id(h.message): h for h in reports}
            await self._apply_and_settle([h.message for h in reports], items, [], held)

    async def ack(self, messages: list[Message]) -> None:
        """One multiple-ack per channel, unless messages are held: a multiple-ack would
        settle them too."""
        if self.held:
            await ack_each(messages)
        else:
            await ack_all(messages)

    def remember(self, outcome: BatchOutcome) -> None:
        """Keep what the outcome's transactions wrote, for the next rounds."""
        for uow, instances in outcome.written:
            self._last_written.remember(uow, instances)

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
        await self._sender.dead_letter(dead, self._topology.reports_queue)
        # Committed: the task messages are safe in the outbox, and the reports can go. The
        # publishing starts first (the next step waits for it) and overlaps the next batch
        # instead of holding it up for the confirms.
        revoked = revoke_notices((uow for uow, _ in outcome.written), self._topology)
        await self._sender.send(outcome.publish, outcome.notices + revoked)
        still_held = self._hold(items, outcome.deferred, held)
        await self.ack([m for m in messages if id(m) not in still_held])

    def _hold(
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
            self.held.hold(entry, now)
        if again:
            log.debug("%d reports wait for instances another session has locked", len(deferred))
        return set(again)

    async def _apply_in_chunks(self, items: list[IncomingReport]) -> BatchOutcome:
        """A few messages can carry thousands of reports (workers batch them): keep each
        transaction, and what it holds in memory, to at most batch_size reports."""
        size = self._settings.batch_size
        outcome = BatchOutcome()
        for start in range(0, len(items), size):
            outcome.merge(await self._apply(items[start : start + size]), offset=start)
        return outcome

    async def _apply(self, items: list[IncomingReport]) -> BatchOutcome:
        """Apply in one transaction; if that fails for a reason other than the database being
        away, split the batch to isolate the report that causes it and dead-letter that one."""
        if not items:
            return BatchOutcome()
        stale = False
        copies = self._last_written.copies_for(item.report for item in items)
        if copies is not None:
            outcome = await self._apply_in_one_statement(items, copies)
            if isinstance(outcome, BatchOutcome):
                return outcome
            stale = outcome

        async def work(db: Session) -> BatchOutcome:
            batch = ReportBatch(db, self._context, stale_copies=stale)
            return await batch.run(items)

        try:
            outcome = await self._store.in_transaction(
                work, stop=self._stop, give_up_after_s=self._give_back_s
            )
            self.remember(outcome)
            return outcome
        except RETRYABLE:
            raise
        except Exception as exc:
            if len(items) <= 1:
                log.exception("report could not be applied; dead-lettering it")
                return BatchOutcome(dead={0: f"engine error: {type(exc).__name__}: {exc}"})
        middle = len(items) // 2
        first = await self._apply(items[:middle])
        return first.merge(await self._apply(items[middle:]), offset=middle)

    async def _apply_in_one_statement(
        self, items: list[IncomingReport], copies: RowCopies
    ) -> BatchOutcome | bool:
        """The one-round-trip path (see LastWrittenRows). If the batch must go the locked way
        after all, whether that is because a row changed since this engine wrote it."""
        try:
            async with self._store.session() as db:
                outcome = await ReportBatch(db, self._context).run_in_one_statement(items, copies)
        except Exception as exc:  # the locked path retries, waits or dead-letters as needed
            log.debug("batch goes the locked way: %r", exc)
            self._last_written.forget(copies.instances)
            # A stale copy fails on a version, or on a task id the newer state already used,
            # or (StaleCopy) before writing, on a task its state does not wait on.
            return isinstance(exc, SerializationError | UniqueViolation | StaleCopy)
        self.remember(outcome)
        return outcome
