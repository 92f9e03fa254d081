"""The queue <ns>.messages: messages from any AMQP producer, correlated one by one.

Each message is correlated in a transaction of its own (daemon/messages.py) and acked after
its commit; one the engine cannot take (not JSON, the wrong shape, no message id, a name no
definition waits for, an id reused with other contents) is dead-lettered with its reason.
While the database is away or the instances it needs stay locked, the message is tried
again and stays unacked meanwhile.
"""

from __future__ import annotations

import asyncio
import logging

from orchestrator.broker.batches import BatchConsumer, ack_each
from orchestrator.broker.topology import Topology
from orchestrator.daemon.messages import Incoming, Messages
from orchestrator.daemon.parsing import Malformed, parse_message
from orchestrator.daemon.sender import DeadLetter, Message, Sender
from orchestrator.daemon.supervisor import sleep_or_stop
from orchestrator.errors import OrchestratorError, ServiceUnavailable
from orchestrator.model.wire import DEFAULT_MESSAGE_TTL_MS
from orchestrator.tracing import header_traceparent

log = logging.getLogger(__name__)
#: Between tries of a message while the database is away or its instances stay locked.
RETRY_PAUSE_S = 1.0


class MessageQueue:
    def __init__(
        self, messages: Messages, sender: Sender, topology: Topology, max_bytes: int
    ) -> None:
        self._messages = messages
        self._sender = sender
        self._topology = topology
        self._max_bytes = max_bytes

    async def serve(self, consumer: BatchConsumer, stop: asyncio.Event) -> None:
        """Until `stop`: each message that arrived, in order."""
        while not stop.is_set():
            waiting = [
                asyncio.ensure_future(consumer.arrived.wait()),
                asyncio.ensure_future(stop.wait()),
            ]
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            for future in waiting:
                future.cancel()
            consumer.arrived.clear()
            batch = consumer.take_ready()
            if consumer.pending():
                consumer.arrived.set()
            for message in batch:
                if stop.is_set():
                    break  # unacked: the broker gives it to another engine
                await self.take(message, stop)
        await consumer.stop()

    async def take(self, message: Message, stop: asyncio.Event) -> None:
        """Correlate one message (or dead-letter it), then ack it."""
        try:
            body = parse_message(message.body, self._max_bytes, message.message_id)
        except Malformed as exc:
            await self._dead(message, str(exc))
            return
        incoming = Incoming(
            body.name,
            body.correlation_key,
            body.variables,
            body.message_id or "",
            DEFAULT_MESSAGE_TTL_MS if body.ttl_ms is None else body.ttl_ms,
            header_traceparent(message.headers),
        )
        while True:
            try:
                outcome = await self._messages.correlate(incoming)
            except ServiceUnavailable as exc:
                log.warning("message %s waits: %s", incoming.message_id, exc)
                await sleep_or_stop(stop, RETRY_PAUSE_S)
                if stop.is_set():
                    return  # unacked: it goes back to the queue
                continue
            except OrchestratorError as exc:  # an unknown name, an id reused
                await self._dead(message, f"{exc.code}: {exc}")
                return
            except Exception as exc:
                log.exception("message %s could not be correlated", incoming.message_id)
                await self._dead(message, f"engine error: {type(exc).__name__}: {exc}")
                return
            break
        log.debug("message %s: %s", incoming.message_id, outcome.status)
        await ack_each([message])

    async def _dead(self, message: Message, reason: str) -> None:
        dead = [DeadLetter(message, reason, message.body)]
        await self._sender.dead_letter(dead, self._topology.messages_queue)
        await ack_each([message])
