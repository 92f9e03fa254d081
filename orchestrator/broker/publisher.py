"""Persistent, mandatory publishing with publisher confirms, many messages in flight at once."""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel
from aiormq.abc import ChannelFrame
from aiormq.exceptions import ChannelInvalidStateError
from pamqp.header import ContentHeader

log = logging.getLogger(__name__)
CONFIRM_TIMEOUT_S = 15.0


class Unroutable(Exception):
    """A mandatory message was returned: no queue is bound for its routing key."""


class Unconfirmed(ConnectionError):
    """The channel went away before the broker confirmed or rejected the message."""


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
    #: AMQP per-message TTL in ms, as text ("" or None: none).
    expiration: str | None = None


class Publisher:
    """Publishes on one channel opened with publisher confirms; returns raise DeliveryError."""

    def __init__(self, channel: AbstractChannel) -> None:
        self._channel = channel

    @classmethod
    async def open(cls, connection: aio_pika.abc.AbstractConnection) -> Publisher:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        return cls(channel)

    async def publish(self, message: Outgoing) -> None:
        """Return once the broker confirmed the message; raise if it was returned or nacked."""
        error = (await self.publish_many([message]))[0]
        if error is not None:
            raise error

    async def publish_many(self, messages: list[Outgoing]) -> list[BaseException | None]:
        """Publish all with confirms in flight together; one result (None = confirmed) each."""
        return await (await self.send_many(messages)).outcomes()

    async def send_many(self, messages: list[Outgoing]) -> Sent:
        """Write all to the socket now; their confirms are awaited with `Sent.outcomes`.

        The messages go out as one write (see `_write_together`): one write per message
        cost the engine a quarter of its CPU. Splitting the write from the wait lets the
        engine hand a round's messages to the socket before it starts the next round, and
        wait for their confirms beside it."""
        if not messages:
            return Sent([])
        try:
            channel = await self._underlay()
            if not _can_write_together(channel):
                return Sent(
                    [asyncio.ensure_future(self._publish_one(channel, m)) for m in messages]
                )
            return Sent(await _write_together(channel, messages))
        except Exception as exc:  # the channel is closed or closing: none of them went out
            return Sent.failed(exc, len(messages))

    @staticmethod
    async def _publish_one(channel: aiormq.abc.AbstractChannel, message: Outgoing) -> None:
        """aiormq's own publish, for a channel `_write_together` cannot drive."""
        # A confirm that never comes (connection lost mid-flight) must not stall the caller.
        result = await channel.basic_publish(
            message.body,
            exchange=message.exchange,
            routing_key=message.routing_key,
            properties=_properties(message, message.message_id or uuid.uuid4().hex),
            mandatory=message.mandatory,
            timeout=CONFIRM_TIMEOUT_S,
        )
        if isinstance(result, aiormq.abc.DeliveredMessage):  # returned: no queue took it
            raise Unroutable(f"no queue took {message.exchange}/{message.routing_key}")

    async def _underlay(self) -> aiormq.abc.AbstractChannel:
        if self._channel.is_closed:
            raise ChannelInvalidStateError("publishing channel is closed")
        return await self._channel.get_underlay_channel()

    async def close(self) -> None:
        if not self._channel.is_closed:
            await self._channel.close()


class Sent:
    """Messages handed to the socket, each with the future of its confirm."""

    def __init__(self, confirmations: list[asyncio.Future[Any]]) -> None:
        self._confirmations = confirmations

    @classmethod
    def failed(cls, error: BaseException, count: int) -> Sent:
        futures: list[asyncio.Future[Any]] = []
        for _ in range(count):
            future = asyncio.get_running_loop().create_future()
            future.set_exception(error)
            futures.append(future)
        return cls(futures)

    async def outcomes(self) -> list[BaseException | None]:
        """One result each, in order: None (confirmed) or why not."""
        if self._confirmations:
            await asyncio.wait(self._confirmations, timeout=CONFIRM_TIMEOUT_S)
        return [_outcome(confirmation) for confirmation in self._confirmations]


def _properties(message: Outgoing, message_id: str) -> aiormq.spec.Basic.Properties:
    return aiormq.spec.Basic.Properties(
        content_type="application/json",
        delivery_mode=2 if message.persistent else 1,
        message_id=message_id,
        correlation_id=message.correlation_id,
        reply_to=message.reply_to,
        headers=dict(message.headers) or None,
        expiration=message.expiration or None,
    )


#: What `_write_together` uses of aiormq's channel: the bookkeeping its own basic_publish
#: does per message (pinned aiormq 7.2; without them publishing falls back to one by one).
_CHANNEL_PARTS = (
    "lock",
    "delivery_tag",
    "confirmations",
    "message_id_delivery_tag",
    "write_queue",
    "number",
    "_split_body",
)


def _can_write_together(channel: Any) -> bool:
    return bool(channel.publisher_confirms) and all(hasattr(channel, a) for a in _CHANNEL_PARTS)


async def _write_together(channel: Any, messages: list[Outgoing]) -> list[asyncio.Future[Any]]:
    """Do what aiormq's basic_publish does for each message (a delivery tag, a confirmation
    future, the message id a return is matched by), but send all their frames in one write."""
    confirmations: list[asyncio.Future[Any]] = []
    frames: list[Any] = []
    async with channel.lock:
        for message in messages:
            message_id = message.message_id or uuid.uuid4().hex
            properties = _properties(message, message_id)
            channel.delivery_tag += 1
            tag = channel.delivery_tag
            confirmation = channel.create_future()
            channel.confirmations[tag] = confirmation
            channel.message_id_delivery_tag[message_id] = tag
            confirmation.add_done_callback(
                functools.partial(_forget_message_id, channel, message_id, tag)
            )
            confirmations.append(confirmation)
            frames.append(
                aiormq.spec.Basic.Publish(
                    exchange=message.exchange,
                    routing_key=message.routing_key,
                    mandatory=message.mandatory,
                )
            )
            frames.append(ContentHeader(properties=properties, body_size=len(message.body)))
            frames += channel._split_body(message.body)
        written = channel.create_future()
        await channel.write_queue.put(
            ChannelFrame.marshall(
                channel_number=channel.number, frames=frames, drain_future=written
            )
        )
        await written
    return confirmations


def _forget_message_id(channel: Any, message_id: str, tag: int, _: object) -> None:
    if channel.message_id_delivery_tag.get(message_id) == tag:
        channel.message_id_delivery_tag.pop(message_id, None)


def _outcome(confirmation: asyncio.Future[Any]) -> BaseException | None:
    if not confirmation.done():
        confirmation.cancel()
        return TimeoutError(f"no confirm within {CONFIRM_TIMEOUT_S} s")
    if confirmation.cancelled():
        # Not a CancelledError: the caller was not cancelled, and a retry loop must see this.
        return Unconfirmed("confirmation cancelled (channel closed?)")
    error = confirmation.exception()
    if error is not None:
        return error
    if isinstance(confirmation.result(), aiormq.abc.DeliveredMessage):
        return Unroutable("a mandatory message was returned: no queue took it")
    return None
