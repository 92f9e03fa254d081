"""After a commit: a round's task messages and answers go to the broker; dead letters too."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, NamedTuple

import orjson
from aio_pika.abc import AbstractIncomingMessage

from orchestrator.broker.publisher import Outgoing, Publisher
from orchestrator.broker.topology import DEAD_REASON_HEADER, Topology
from orchestrator.daemon.relay import Relay
from orchestrator.daemon.reports import Notice
from orchestrator.errors import OrchestratorError
from orchestrator.model.wire import CommandError, CommandReply
from orchestrator.store.errors import RETRYABLE
from orchestrator.store.store import Store
from orchestrator.store.unit_of_work import PublishedRow

log = logging.getLogger(__name__)
Message = AbstractIncomingMessage
#: What a command is answered with: its result, or the error that stopped it.
CommandResult = dict[str, Any] | OrchestratorError


class DeadLetter(NamedTuple):
    message: Message
    reason: str
    body: bytes


class Sender:
    """Hands committed task messages and answers to the socket before the next round
    starts, and waits for their confirms beside the rounds (at most `in_flight` rounds'
    worth at a time)."""

    def __init__(
        self,
        store: Store,
        relay: Relay,
        publisher: Publisher,
        topology: Topology,
        *,
        in_flight: int = 8,
    ) -> None:
        self._store = store
        self._relay = relay
        self._publisher = publisher
        self._topology = topology
        #: Confirms awaited beside the rounds, overlapping the next batch (bounded).
        self._settling: set[asyncio.Task[int]] = set()
        self._slots = asyncio.Semaphore(in_flight)

    async def send(self, rows: list[PublishedRow], notices: list[Notice]) -> None:
        """Hand a committed round's task messages and answers (replies, notices) to the
        socket now, in one write, before the next round starts (the next step waits for
        them); wait for their confirms beside the loop."""
        if not rows and not notices:
            return
        await self._slots.acquire()
        try:
            in_flight = await self._relay.send(rows, also=[_answer_message(n) for n in notices])
        except BaseException:
            self._slots.release()
            raise
        task = asyncio.create_task(in_flight.settle())
        self._settling.add(task)
        task.add_done_callback(self._settled)

    def _settled(self, task: asyncio.Task[int]) -> None:
        self._settling.discard(task)
        self._slots.release()
        if not task.cancelled() and task.exception() is not None:
            # The rows stay in the outbox; the sweeper publishes them.
            log.error("publishing after commit failed: %r", task.exception())

    async def wait(self, timeout: float) -> None:
        """For the confirms still awaited (at shutdown)."""
        if self._settling:
            await asyncio.wait(self._settling, timeout=timeout)

    async def dead_letter(self, dead: list[DeadLetter], source: str) -> None:
        """Publish each to the dead exchange with its reason, and count them (outside the
        batch's transaction, which may be the very thing that failed)."""
        if not dead:
            return
        counter = {
            self._topology.reports_queue: "reports_dead_lettered",
            self._topology.messages_queue: "messages_dead_lettered",
        }.get(source, "commands_dead_lettered")
        try:
            await self._store.bump_counter(counter, len(dead))
        except RETRYABLE as exc:
            log.warning("could not count %d dead letters: %s", len(dead), exc)
        for message, reason, body in dead:
            log.warning("dead-lettering a message from %s: %s", source, reason)
            headers = {DEAD_REASON_HEADER: reason[:1000], "x-orch-source-queue": source}
            try:
                await self._publisher.publish(
                    Outgoing(
                        self._topology.dead_exchange,
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


def replies(answers: list[tuple[Message, CommandResult]]) -> list[Notice]:
    """The replies to commands, sent after the round without holding up the next one for
    their confirms: a lost reply is resent by the client (starts are idempotent), so the
    loop need not wait to know it arrived."""
    return [
        Notice(
            message.reply_to,
            orjson.dumps(_reply_of(result).model_dump(mode="json")),
            correlation_id=message.correlation_id,
        )
        for message, result in answers
        if message.reply_to
    ]


def _reply_of(result: CommandResult) -> CommandReply:
    if isinstance(result, OrchestratorError):
        return CommandReply(ok=False, error=CommandError(code=result.code, message=str(result)))
    return CommandReply(ok=True, result=result)


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
