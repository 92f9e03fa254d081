"""Acking deliveries together: one `multiple` ack for a run of settled deliveries.

A worker acks each task delivery when its outcome is confirmed; with short tasks that is a
frame and a socket write per task, which cost a worker a third of its CPU. Deliveries that
settle in the same loop iteration are acked with one frame instead.

Delivery tags count up from 1 on each channel. A `multiple` ack up to tag T settles every
delivery up to T the broker still holds, so it is only sent for a run of tags this worker has
seen settle, every one of them: a delivery still running is never acked by another's ack.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from aio_pika.abc import AbstractIncomingMessage
from aiormq.exceptions import ChannelInvalidStateError

from orchestrator.broker.batches import send_acks

log = logging.getLogger(__name__)


@dataclass
class _Channel:
    owner: object
    #: Every delivery up to this tag is settled (acked, or nacked / rejected by us).
    settled_upto: int = 0
    #: Tags of settled deliveries waiting for their ack.
    ready: set[int] = field(default_factory=set)
    #: Tags above settled_upto already settled on their own.
    done: set[int] = field(default_factory=set)


class AckBatcher:
    def __init__(self) -> None:
        self._channels: dict[int, _Channel] = {}
        self._flush: asyncio.Task[None] | None = None

    def ack(self, delivery: AbstractIncomingMessage) -> None:
        """Ack soon, together with whatever else settles in this loop iteration."""
        channel = self._channel_of(delivery)
        if channel is None or delivery.delivery_tag is None:
            return  # its channel is closed: the broker has requeued it already
        channel.ready.add(delivery.delivery_tag)
        if self._flush is None:
            self._flush = asyncio.ensure_future(self._flush_soon())

    def settled_elsewhere(self, delivery: AbstractIncomingMessage) -> None:
        """A delivery nacked or rejected on its own: later acks may pass over it."""
        channel = self._channel_of(delivery)
        if channel is not None and delivery.delivery_tag is not None:
            channel.done.add(delivery.delivery_tag)

    async def flush(self) -> None:
        for key, channel in list(self._channels.items()):
            try:
                await self._flush_channel(channel)
            except Exception as exc:  # channel replaced by a reconnect: its tags are gone
                log.info("acks skipped (%s); the broker redelivers those tasks", exc)
                self._channels.pop(key, None)

    async def _flush_soon(self) -> None:
        try:
            while True:
                await asyncio.sleep(0)  # let the rest of this iteration's settlements join
                await self.flush()
                # Deliveries that settled while the acks were being written go next round.
                if not any(channel.ready for channel in self._channels.values()):
                    return
        finally:
            self._flush = None

    async def _flush_channel(self, channel: _Channel) -> None:
        last: int | None = None
        while True:
            tag = channel.settled_upto + 1
            if tag in channel.ready:
                channel.ready.discard(tag)
                last = tag
            elif tag in channel.done:
                channel.done.discard(tag)
            else:
                break
            channel.settled_upto = tag
        # Ready deliveries above a gap (a task still running) are acked each on its own,
        # now: holding them would hold their prefetch slots for as long as the slow task runs.
        alone = sorted(channel.ready)
        channel.ready.clear()
        channel.done.update(alone)
        sent = True
        if last is not None:
            sent = await send_acks(channel.owner, [last], multiple=True)
        if alone and sent:
            sent = await send_acks(channel.owner, alone, multiple=False)
        if not sent:
            raise ChannelInvalidStateError("channel closed")

    def _channel_of(self, delivery: AbstractIncomingMessage) -> _Channel | None:
        try:
            owner = delivery.channel
        except ChannelInvalidStateError:
            return None
        channel = self._channels.get(id(owner))
        if channel is None or channel.owner is not owner:  # new, or a new one at a reused id
            channel = self._channels[id(owner)] = _Channel(owner)
        return channel
