"""Acks written in one go without waiting for the socket: each acks exactly what it names,
and nothing else, on a real broker."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import aio_pika
import pytest

from orchestrator.broker.batches import BatchConsumer, ack_all, ack_each
from orchestrator.config import Settings
from tests.support.harness import durable_queue

pytestmark = pytest.mark.integration


@pytest.fixture
async def queue_name(settings: Settings) -> AsyncIterator[str]:
    async with durable_queue(settings, f"acks-test-{uuid.uuid4().hex[:6]}") as name:
        yield name


async def _fill(settings: Settings, name: str, count: int) -> None:
    connection = await aio_pika.connect(settings.amqp_url)
    try:
        channel = await connection.channel()
        for n in range(count):
            await channel.default_exchange.publish(
                aio_pika.Message(str(n).encode(), message_id=str(n)), routing_key=name
            )
    finally:
        await connection.close()


async def _take(consumer: BatchConsumer, count: int) -> list[aio_pika.abc.AbstractIncomingMessage]:
    taken: list[aio_pika.abc.AbstractIncomingMessage] = []
    while len(taken) < count:
        taken += await asyncio.wait_for(consumer.next_batch(), 10)
    return taken


async def _left_after_close(
    settings: Settings, name: str, count: int, settle: list[tuple[str, list[int]]]
) -> list[str]:
    """Consume all `count` messages, ack the ones `settle` names (by body) the way it says, close
    the connection without a word more, and return the bodies the broker still holds."""
    connection = await aio_pika.connect(settings.amqp_url)
    try:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=100)
        queue = await channel.get_queue(name)
        consumer = BatchConsumer(queue, max_batch=100)
        await consumer.start()
        messages = await _take(consumer, count)
        by_body = {int(m.body): m for m in messages}
        for how, bodies in settle:
            chosen = [by_body[n] for n in bodies]
            await (ack_each(chosen) if how == "each" else ack_all(chosen))
        # The acks were only queued for the writer: a confirmed publish on the same
        # connection, after them, proves they reached the broker before the close.
        marker = await connection.channel(publisher_confirms=True)
        await marker.default_exchange.publish(aio_pika.Message(b"marker"), routing_key=name)
    finally:
        await connection.close()
    left = []
    connection = await aio_pika.connect(settings.amqp_url)
    try:
        channel = await connection.channel()
        queue = await channel.get_queue(name)
        while (message := await queue.get(no_ack=True, fail=False)) is not None:
            left.append(message.body.decode())
    finally:
        await connection.close()
    return sorted(left)


async def test_ack_each_acks_exactly_the_messages_named(
    settings: Settings, queue_name: str
) -> None:
    await _fill(settings, queue_name, 6)
    left = await _left_after_close(settings, queue_name, 6, [("each", [1, 3, 4])])
    assert left == ["0", "2", "5", "marker"]


async def test_ack_all_acks_up_to_the_highest_tag(settings: Settings, queue_name: str) -> None:
    await _fill(settings, queue_name, 6)
    left = await _left_after_close(settings, queue_name, 6, [("all", [2, 0, 3])])
    assert left == ["4", "5", "marker"]


async def test_acks_of_a_closed_channel_are_skipped(settings: Settings, queue_name: str) -> None:
    await _fill(settings, queue_name, 2)
    connection = await aio_pika.connect(settings.amqp_url)
    try:
        channel = await connection.channel()
        queue = await channel.get_queue(name=queue_name)
        consumer = BatchConsumer(queue, max_batch=10)
        await consumer.start()
        messages = await _take(consumer, 2)
        await channel.close()
        await ack_each(messages)  # no error: the broker has requeued them already
        await ack_all(messages)
    finally:
        await connection.close()
    left = await _left_after_close(settings, queue_name, 2, [])
    assert left == ["0", "1", "marker"]
