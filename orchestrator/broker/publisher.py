"""Persistent, mandatory publishing with publisher confirms, many messages in flight at once."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange

log = logging.getLogger(__name__)
CONFIRM_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class Outgoing:
    exchange: str  # "" is the default exchange (direct to a queue by name)
    routing_key: str
    body: bytes
    message_id: str | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    persistent: bool = True
    mandatory: bool = True


class Publisher:
    """Publishes on one channel opened with publisher confirms; returns raise DeliveryError."""

    def __init__(self, channel: AbstractChannel) -> None:
        self._channel = channel
        self._exchanges: dict[str, AbstractExchange] = {}

    @classmethod
    async def open(cls, connection: aio_pika.abc.AbstractConnection) -> Publisher:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        return cls(channel)

    async def _exchange(self, name: str) -> AbstractExchange:
        if name == "":
            return self._channel.default_exchange
        exchange = self._exchanges.get(name)
        if exchange is None:
            exchange = await self._channel.get_exchange(name, ensure=False)
            self._exchanges[name] = exchange
        return exchange

    async def publish(self, message: Outgoing) -> None:
        """Return once the broker confirmed the message; raise if it was returned or nacked."""
        exchange = await self._exchange(message.exchange)
        delivery = (
            aio_pika.DeliveryMode.PERSISTENT
            if message.persistent
            else aio_pika.DeliveryMode.NOT_PERSISTENT
        )
        amqp_message = aio_pika.Message(
            message.body,
            content_type="application/json",
            delivery_mode=delivery,
            message_id=message.message_id,
            correlation_id=message.correlation_id,
            reply_to=message.reply_to,
            headers=dict(message.headers) or None,
        )
        # A confirm that never comes (connection lost mid-flight) must not stall the caller.
        await asyncio.wait_for(
            exchange.publish(amqp_message, message.routing_key, mandatory=message.mandatory),
            timeout=CONFIRM_TIMEOUT_S,
        )

    async def publish_many(self, messages: list[Outgoing]) -> list[BaseException | None]:
        """Publish all with confirms in flight together; one result (None = confirmed) each."""
        results = await asyncio.gather(
            *(self.publish(message) for message in messages), return_exceptions=True
        )
        return [result if isinstance(result, BaseException) else None for result in results]

    async def close(self) -> None:
        if not self._channel.is_closed:
            await self._channel.close()
