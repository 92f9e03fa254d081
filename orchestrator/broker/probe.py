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


async def queue_counts(
    connection: AbstractConnection, topology: Topology, topics: list[str]
) -> QueueCounts:
    """The ready reports, and (ready messages, consumers) of each topic's queue, by passive
    declares on a channel opened for this call: a robust channel would answer a repeated
    passive declare from its own memory, and a missing queue closes the channel it was asked
    about on. A topic queue that does not exist (it was deleted) is declared again, as the
    relay would before publishing to it; it then has neither messages nor consumers."""
    counts: dict[str, tuple[int, int]] = {}
    channel = await asyncio.wait_for(connection.channel(), PROBE_TIMEOUT_S)
    try:
        reports_ready, _ = await _passive(channel, topology.reports_queue)
        for topic in topics:
            try:
                counts[topic] = await _passive(channel, topology.task_queue(topic))
            except ChannelNotFoundEntity:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(channel.close(), PROBE_TIMEOUT_S)
                channel = await asyncio.wait_for(connection.channel(), PROBE_TIMEOUT_S)
                await asyncio.wait_for(
                    declare_task_queue(channel, topology, topic), PROBE_TIMEOUT_S
                )
                counts[topic] = (0, 0)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(channel.close(), PROBE_TIMEOUT_S)
    return QueueCounts(reports_ready, counts)


async def _passive(channel: AbstractChannel, name: str) -> tuple[int, int]:
    queue = await asyncio.wait_for(channel.declare_queue(name, passive=True), PROBE_TIMEOUT_S)
    result = queue.declaration_result
    return result.message_count or 0, result.consumer_count or 0
