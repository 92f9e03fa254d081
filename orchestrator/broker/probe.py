"""How many messages wait in topic queues and in the reports queue, and how many consumers
read the topic queues."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from aio_pika.abc import AbstractChannel, AbstractConnection
from aio_pika.exceptions import ChannelNotFoundEntity

from orchestrator.broker.topology import Topology, declare_task_queue

PROBE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class QueueCounts:
    #: Report messages the engines have not taken yet (ready in the reports queue).
    reports_ready: int
    #: Topic -> (ready messages, consumers) of its task queue.
    topics: dict[str, tuple[int, int]] = field(default_factory=dict)


class QueueProbe:
    """Passive declares on one channel kept between looks: a channel opened per look cost the
    broker an open and a close each time (the dispatch watch looks every 200 ms). They go to
    the underlying channel, so the broker answers, not a robust channel's memory of an earlier
    declare. A missing queue closes the channel it was asked about on; the next look opens
    another."""

    def __init__(self, connection: AbstractConnection) -> None:
        self._connection = connection
        self._channel: AbstractChannel | None = None

    async def look(self, queue: str, timeout: float = PROBE_TIMEOUT_S) -> tuple[int, int]:
        """(ready messages, consumers) of `queue`; ChannelNotFoundEntity if there is none."""
        if self._channel is None or self._channel.is_closed:
            self._channel = await asyncio.wait_for(self._connection.channel(), timeout)
        underlay = await self._channel.get_underlay_channel()
        declared = await underlay.queue_declare(queue, passive=True, timeout=timeout)
        return declared.message_count or 0, declared.consumer_count or 0

    async def declare_task_queue(self, topology: Topology, topic: str) -> None:
        """Declare a topic's queue again (it was deleted), as the relay would before
        publishing to it."""
        if self._channel is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._channel.close(), PROBE_TIMEOUT_S)
        self._channel = await asyncio.wait_for(self._connection.channel(), PROBE_TIMEOUT_S)
        await asyncio.wait_for(declare_task_queue(self._channel, topology, topic), PROBE_TIMEOUT_S)


async def queue_counts(probe: QueueProbe, topology: Topology, topics: list[str]) -> QueueCounts:
    """The ready reports, and (ready messages, consumers) of each topic's queue. A topic queue
    that does not exist (it was deleted) is declared again; it then has neither messages nor
    consumers."""
    counts: dict[str, tuple[int, int]] = {}
    reports_ready, _ = await probe.look(topology.reports_queue)
    for topic in topics:
        try:
            counts[topic] = await probe.look(topology.task_queue(topic))
        except ChannelNotFoundEntity:
            await probe.declare_task_queue(topology, topic)
            counts[topic] = (0, 0)
    return QueueCounts(reports_ready, counts)
