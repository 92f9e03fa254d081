"""Consume a queue in micro-batches: whatever arrived while the last batch was processed."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Sequence
from typing import Any

import aiormq
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue
from aiormq.abc import ChannelFrame
from aiormq.exceptions import ChannelInvalidStateError

log = logging.getLogger(__name__)


class BatchConsumer:
    def __init__(
        self,
        queue: AbstractQueue,
        *,
        max_batch: int,
        arrived: asyncio.Event | None = None,
        channel: AbstractChannel | None = None,
    ) -> None:
        self._queue = queue
        #: The consumer's own channel, if it has one: closing it gives back what it holds.
        self._channel = channel
        self._max_batch = max_batch
        self._inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self._consumer_tag: str | None = None
        #: Set whenever a message arrives: one event can wake a loop that serves several
        #: consumers (see `take_ready`).
        self.arrived = arrived if arrived is not None else asyncio.Event()

    async def start(self) -> None:
        self._consumer_tag = await self._queue.consume(self._put, no_ack=False)

    async def _put(self, message: AbstractIncomingMessage) -> None:
        self._inbox.put_nowait(message)
        self.arrived.set()

    async def stop(self) -> None:
        """Stop taking new messages; what is already delivered and unacked goes back on close."""
        if self._consumer_tag is not None:
            tag, self._consumer_tag = self._consumer_tag, None
            # The channel may already be gone (nothing to cancel then), or its connection
            # silent: a broker that does not answer in time has dropped the consumer anyway.
            await _settle_quietly(self._queue.cancel(tag), f"cancel of consumer {tag}")

    async def close(self) -> None:
        """Stop, and give every delivery not yet acked back to the broker (it requeues them
        for other consumers) by closing the consumer's own channel."""
        self._consumer_tag = None  # closing the channel cancels its consumer
        self._inbox = asyncio.Queue()
        if self._channel is not None:
            # Already closed with its connection, or the connection is silent: either way the
            # broker requeues the deliveries once it drops the channel.
            await _settle_quietly(self._channel.close(), "closing a consumer's channel")

    def pending(self) -> int:
        return self._inbox.qsize()

    async def next_batch(self) -> list[AbstractIncomingMessage]:
        batch = [await self._inbox.get()]
        self._drain(batch)
        return batch

    def take_ready(self) -> list[AbstractIncomingMessage]:
        """Whatever has arrived (up to a batch), without waiting."""
        batch: list[AbstractIncomingMessage] = []
        self._drain(batch)
        return batch

    def _drain(self, batch: list[AbstractIncomingMessage]) -> None:
        while len(batch) < self._max_batch and not self._inbox.empty():
            batch.append(self._inbox.get_nowait())


async def _settle_quietly(step: Awaitable[Any], what: str, timeout: float = 5.0) -> None:
    """Await a best-effort broker call, bounded in time. Its failure is logged, not raised:
    aiormq even cancels an RPC whose connection died, which must not end the caller's loop
    (unless the caller itself is being cancelled)."""
    try:
        await asyncio.wait_for(step, timeout)
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
        log.debug("%s was cancelled with its connection", what)
    except Exception:
        log.debug("%s failed", what, exc_info=True)


async def ack_all(messages: Sequence[AbstractIncomingMessage]) -> None:
    """Ack a processed batch: one multiple-ack per channel the messages came on.

    After a reconnect a batch can hold deliveries of a dead channel; their tags mean nothing
    on the new one, and the broker has already requeued them, so their ack is skipped.
    """
    last_by_channel: dict[int, tuple[Any, int]] = {}
    for message in messages:
        try:
            channel = message.channel
        except ChannelInvalidStateError:  # its channel is closed: the broker requeued it
            continue
        tag = message.delivery_tag or 0
        current = last_by_channel.get(id(channel))
        if current is None or tag > current[1]:
            last_by_channel[id(channel)] = (channel, tag)
    for channel, tag in last_by_channel.values():
        await send_acks(channel, [tag], multiple=True)


async def ack_each(messages: Sequence[AbstractIncomingMessage]) -> None:
    """Ack one by one, for a channel whose deliveries are settled out of order (a multiple
    ack would also cover earlier deliveries still being worked on)."""
    by_channel: dict[int, tuple[Any, list[int]]] = {}
    for message in messages:
        try:
            channel = message.channel
        except ChannelInvalidStateError:  # its channel is closed: the broker requeued it
            continue
        if message.delivery_tag is not None:
            by_channel.setdefault(id(channel), (channel, []))[1].append(message.delivery_tag)
    for channel, tags in by_channel.values():
        await send_acks(channel, tags, multiple=False)


async def send_acks(channel: Any, tags: list[int], *, multiple: bool) -> bool:
    """Queue the acks for the connection's writer, all in one write, and go on; False if
    the channel is gone (the broker has requeued its deliveries: nothing to ack).

    Their way to the socket is not waited for: an ack has no answer, and waiting cost the
    engine's loop a turn of the event loop per ack while the next round's messages waited.
    What matters, that an ack goes after the commit, holds: it is queued after it. (The
    queue is bounded: when it is full, this waits for room, as aiormq's own calls do.)"""
    try:
        if channel.is_closed:
            raise ChannelInvalidStateError("channel closed")
        if _can_write_directly(channel):
            acks = [aiormq.spec.Basic.Ack(delivery_tag=tag, multiple=multiple) for tag in tags]
            await channel.write_queue.put(
                ChannelFrame.marshall(channel_number=channel.number, frames=acks)
            )
            return True
        for tag in tags:  # an aiormq whose internals differ: its own call, one write each
            await channel.basic_ack(tag, multiple=multiple, wait=False)
    except Exception as exc:  # a closed channel: the broker redelivers, the ledger dedupes
        log.warning("could not ack %d deliveries (channel closed?): %s", len(tags), exc)
        return False
    return True


def _can_write_directly(channel: Any) -> bool:
    return hasattr(channel, "write_queue") and hasattr(channel, "number")
