"""The commands' side of a round: starts in one go; every other command to the operator
commands, answered beside the rounds; commands past their sender's deadline dropped.

A batch of starts goes in one autocommit statement when this engine can decide it alone
(see StartBatch.run_in_one_statement), else in a transaction under locks, split until a
faulty start is isolated. A start that needs a key another session holds is held and tried
again shortly.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from orchestrator import tracing
from orchestrator.broker.batches import ack_each
from orchestrator.broker.deadline import split_lapsed
from orchestrator.daemon.commands import OperatorCommands
from orchestrator.daemon.held import Held, HeldMessages
from orchestrator.daemon.parsing import Malformed, parse_command
from orchestrator.daemon.round_context import RoundContext, RoundPart
from orchestrator.daemon.sender import CommandResult, DeadLetter, Message, replies
from orchestrator.daemon.starts import StartBatch, StartResult
from orchestrator.errors import CommandTimeout, InvalidCommand, OrchestratorError
from orchestrator.faults import crash_point
from orchestrator.model.wire import Command, StartCommand
from orchestrator.store.errors import RETRYABLE, LockBusy, NeedsLocks
from orchestrator.store.store import Session
from orchestrator.store.unit_of_work import UnitOfWork

log = logging.getLogger(__name__)


class StartRounds(RoundPart):
    """The command messages of every round loop of the engine (the held starts are the
    engine's, not a loop's). This channel's deliveries are acked one by one, never with
    `multiple`: operator commands are acked whenever they are answered."""

    def __init__(self, rounds: RoundContext, commands: OperatorCommands) -> None:
        super().__init__(rounds)
        self._commands = commands
        #: Starts waiting for keys another session has locked (see held.py).
        self.held: HeldMessages[StartCommand] = HeldMessages()

    def parse(self, batch: list[Message]) -> list[tuple[Message, Command | Malformed]]:
        parsed: list[tuple[Message, Command | Malformed]] = []
        for message in batch:
            try:
                parsed.append(
                    (message, parse_command(message.body, self._settings.max_report_bytes))
                )
            except Malformed as exc:
                parsed.append((message, exc))
        return parsed

    async def handle(self, batch: list[Message]) -> None:
        """Starts in one go; anything else is answered in the background."""
        starts: list[tuple[Message, StartCommand]] = []
        answers: list[tuple[Message, CommandResult]] = []
        dead: list[DeadLetter] = []
        settled: list[Message] = []
        for message, command in self.parse(batch):
            if isinstance(command, Malformed):
                answers.append((message, InvalidCommand(str(command))))
                dead.append(DeadLetter(message, str(command), message.body))
                settled.append(message)
                continue
            if isinstance(command, StartCommand):
                starts.append((message, _traced(message, command)))
                settled.append(message)
            else:
                self._commands.answer_in_background(message, command)
        await self._sender.dead_letter(dead, self._topology.commands_queue)
        if starts and tracing.enabled():
            await self._run_in_spans(starts, answers, settled)
        else:
            await self._run(starts, answers, settled=settled)

    async def _run_in_spans(
        self,
        starts: list[tuple[Message, StartCommand]],
        answers: list[tuple[Message, CommandResult]],
        settled: list[Message],
    ) -> None:
        """`_run` with OpenTelemetry: a span per start, a child of its caller's span (a new
        trace without one), whose traceparent the instance keeps, so its tasks are children
        of it; and a span of the round, linked to each of them."""
        spans: dict[int, Any] = {}
        traced: list[tuple[Message, StartCommand]] = []
        for message, command in starts:
            span = tracing.start_span(
                f"orchestrator start {command.process_key}",
                parent=command.traceparent,
                kind="consumer",
                attributes={"orchestrator.process_key": command.process_key},
            )
            traceparent = tracing.traceparent_of(span) if span is not None else None
            if span is not None and traceparent is not None:
                spans[id(message)] = span
                command = command.model_copy(update={"traceparent": traceparent})
            traced.append((message, command))
        links = tracing.links_to(command.traceparent for _, command in traced)
        try:
            with tracing.span(
                "orchestrator start round",
                links=links,
                attributes={"orchestrator.starts": len(starts)},
            ):
                await self._run(traced, answers, settled=settled)
        finally:
            for message, result in answers:
                span = spans.get(id(message))
                if span is not None and isinstance(result, dict) and "instance_id" in result:
                    span.set_attribute("orchestrator.instance_id", str(result["instance_id"]))
                    span.set_attribute("orchestrator.created", bool(result.get("created")))
            for span in spans.values():
                span.end()

    async def drop_lapsed(self, lapsed: list[tuple[Message, str]]) -> None:
        """Commands whose sender's deadline passed before they arrived (the sender gave up on
        them: see orchestrator/broker/deadline.py) take no effect. Each is answered, in case
        its sender still listens (a clock behind the engine's), counted and acked."""
        log.warning("dropped %d commands past their deadline: %s", len(lapsed), lapsed[0][1])
        try:
            await self._store.bump_counter("commands_expired", len(lapsed))
        except RETRYABLE as exc:
            log.warning("could not count %d expired commands: %s", len(lapsed), exc)
        answers: list[tuple[Message, CommandResult]] = [
            (message, CommandTimeout(reason)) for message, reason in lapsed
        ]
        await self._sender.send([], replies(answers))
        await ack_each([message for message, _ in lapsed])

    async def retry_held(self, now: float) -> None:
        """Try the held starts whose pause is over."""
        starts = self.held.take_due(now)
        fresh, lapsed = split_lapsed([h.message for h in starts], time.time() * 1000)
        if lapsed:  # held past their sender's deadline: they take no effect after all
            await self.drop_lapsed(lapsed)
            starts = [h for h in starts if any(h.message is m for m in fresh)]
        if starts:
            await self._run([(h.message, h.items[0]) for h in starts], [], held=starts)

    def started(self, uow: UnitOfWork) -> None:
        """After a start batch committed, either way: keep its rows for the next round."""
        crash_point("after_start_commit")
        self._last_written.remember(uow, {})

    async def _run(
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
                    self.held.hold(entry, now)
                    held_now.add(id(message))
                    continue
                answers.append((message, result))
                if id(message) in earlier:
                    settled.append(message)
        await self._sender.send(rows, replies(answers))
        await ack_each([m for m in settled if id(m) not in held_now])

    async def _start_all(
        self, commands: list[StartCommand]
    ) -> tuple[list[StartResult | None], list[Any]]:
        """The results (None: held, see `_start_locked`), and the committed outbox rows the
        caller is to publish (with the replies, in one go); the locked way publishes each
        part's rows itself."""
        in_one = await self._start_in_one_statement(commands)
        if in_one is not None:
            results, rows = in_one
            return list(results), rows
        return await self._start_locked(commands), []

    async def _start_in_one_statement(
        self, commands: list[StartCommand]
    ) -> tuple[list[StartResult], list[Any]] | None:
        """The one-statement start (see StartBatch.run_in_one_statement); None: go the
        locked way."""
        try:
            async with self._store.session() as db:
                batch = StartBatch(db, self._context)
                results, rows, uow = await batch.run_in_one_statement(commands)
        except NeedsLocks:
            return None
        except Exception as exc:  # the locked way retries, waits or reports as needed
            log.debug("starts go the locked way: %r", exc)
            return None
        self.started(uow)
        return results, rows

    async def _start_locked(self, commands: list[StartCommand]) -> list[StartResult | None]:
        """Starts the locked way, split until what fails is isolated. None for a start that
        needs a key (idempotency or business key) another session holds uncommitted."""

        async def work(db: Session) -> tuple[list[StartResult], list[Any], UnitOfWork]:
            return await StartBatch(db, self._context).run(commands)

        try:
            results, rows, uow = await self._store.in_transaction(
                work, stop=self._stop, give_up_after_s=self._give_back_s
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
        self.started(uow)
        await self._sender.send(rows, [])
        return [*results]


def _traced(message: Message, command: StartCommand) -> StartCommand:
    """The start with its caller's trace: the body's `traceparent`, else the message's
    header (a bad one in either is ignored)."""
    if command.traceparent is None:
        traceparent = tracing.header_traceparent(message.headers)
        if traceparent is not None:
            return command.model_copy(update={"traceparent": traceparent})
    return command
