"""Publishing many messages in one write keeps every guarantee of publishing one by one:
each is confirmed (or reported returned) on its own, in order, with its properties."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import aio_pika
import pytest
from aiormq.exceptions import PublishError

from orchestrator.broker.publisher import Outgoing, Publisher, Unconfirmed, Unroutable, _outcome
from orchestrator.config import Settings
from tests.support.harness import durable_queue

pytestmark = pytest.mark.integration


@pytest.fixture
async def queue_name(settings: Settings) -> AsyncIterator[str]:
    async with durable_queue(settings, "publisher-test") as name:
        yield name


async def _drain(settings: Settings, name: str) -> list[aio_pika.abc.AbstractIncomingMessage]:
    connection = await aio_pika.connect(settings.amqp_url)
    try:
        channel = await connection.channel()
        queue = await channel.get_queue(name)
        got = []
        while (message := await queue.get(no_ack=True, fail=False)) is not None:
            got.append(message)
        return got
    finally:
        await connection.close()


async def test_many_messages_in_one_write_are_each_confirmed(
    settings: Settings, queue_name: str
) -> None:
    connection = await aio_pika.connect(settings.amqp_url)
    try:
        publisher = await Publisher.open(connection)
        batch = [
            Outgoing("", queue_name, f'{{"n": {n}}}'.encode(), message_id=f"m-{n}")
            for n in range(50)
        ]
        results = await publisher.publish_many(batch)
        # The single-message path still pairs confirms with the right tags afterwards.
        await publisher.publish(Outgoing("", queue_name, b'{"n": 50}', message_id="m-50"))
    finally:
        await connection.close()
    assert results == [None] * 50
    got = await _drain(settings, queue_name)
    assert [m.message_id for m in got] == [f"m-{n}" for n in range(51)]
    assert all(m.delivery_mode == aio_pika.DeliveryMode.PERSISTENT for m in got)
    assert got[7].body == b'{"n": 7}'


async def test_a_returned_message_fails_alone(settings: Settings, queue_name: str) -> None:
    nowhere = f"nowhere-{uuid.uuid4().hex}"
    connection = await aio_pika.connect(settings.amqp_url)
    try:
        publisher = await Publisher.open(connection)
        results = await publisher.publish_many(
            [
                Outgoing("", queue_name, b"{}", message_id="first"),
                Outgoing("", nowhere, b"{}", message_id="lost"),
                Outgoing("", queue_name, b"{}", message_id="third"),
            ]
        )
    finally:
        await connection.close()
    assert results[0] is None and results[2] is None
    assert results[1] is not None
    assert [m.message_id for m in await _drain(settings, queue_name)] == ["first", "third"]


async def test_a_closed_channel_fails_each_message_without_raising(
    settings: Settings, queue_name: str
) -> None:
    connection = await aio_pika.connect(settings.amqp_url)
    try:
        publisher = await Publisher.open(connection)
        await publisher.close()
        results = await publisher.publish_many(
            [Outgoing("", queue_name, b"{}", message_id=f"m-{n}") for n in range(3)]
        )
    finally:
        await connection.close()
    assert len(results) == 3 and all(isinstance(r, Exception) for r in results)


async def test_one_message_raises_when_returned_or_when_its_channel_is_gone(
    settings: Settings, queue_name: str
) -> None:
    connection = await aio_pika.connect(settings.amqp_url)
    try:
        publisher = await Publisher.open(connection)
        with pytest.raises((Unroutable, PublishError), match=r"NO_ROUTE|no queue"):
            await publisher.publish(Outgoing("", f"nowhere-{uuid.uuid4().hex}", b"{}"))
        await publisher.publish(Outgoing("", queue_name, b"{}", message_id="after"))
        await publisher.close()
        # An ordinary error, which a retry loop catches; never a CancelledError, which would
        # end the caller as if it had been cancelled.
        with pytest.raises(Exception) as caught:
            await publisher.publish(Outgoing("", queue_name, b"{}", message_id="too-late"))
    finally:
        await connection.close()
    assert not isinstance(caught.value, asyncio.CancelledError)
    assert [m.message_id for m in await _drain(settings, queue_name)] == ["after"]


async def test_a_confirmation_cancelled_with_its_channel_is_an_error_not_a_cancellation() -> None:
    confirmation: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    confirmation.cancel()
    assert isinstance(_outcome(confirmation), Unconfirmed)
