"""A worker by hand, for tests that need to send exact reports and read the engine's answers."""

from __future__ import annotations

from typing import Any

import aio_pika
import orjson
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage

from orchestrator.broker.topology import REPORT_ROUTING_KEY, Topology
from orchestrator.config import Settings
from orchestrator.model.wire import NOTICE_ADAPTER, ReportAnswer, TaskMessage, WorkerNotice
from tests.support.harness import take_task, wait_until

TIMEOUT = 15.0


class RawWorker:
    """A worker by hand: takes task messages off their queues and publishes reports itself.

    Engine answers (ReportAnswer, TaskRevoked, ...) to reports sent with `reply=True` are
    collected in `notices`, in arrival order.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topology = Topology(settings.namespace)
        self.notices: list[WorkerNotice] = []
        self.reply_to = ""
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None

    async def __aenter__(self) -> RawWorker:
        self._connection = await aio_pika.connect(self.settings.amqp_url)
        self._channel = await self._connection.channel(publisher_confirms=True)
        inbox = await self._channel.declare_queue(exclusive=True, auto_delete=True)
        await inbox.consume(self._on_notice, no_ack=True)
        self.reply_to = inbox.name
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._connection is not None:
            await self._connection.close()

    @property
    def channel(self) -> AbstractChannel:
        assert self._channel is not None, "use RawWorker as an async context manager"
        return self._channel

    async def _on_notice(self, message: AbstractIncomingMessage) -> None:
        self.notices.append(NOTICE_ADAPTER.validate_json(message.body))

    def answers(self) -> list[ReportAnswer]:
        return [n for n in self.notices if isinstance(n, ReportAnswer)]

    async def take(self, topic: str) -> TaskMessage:
        """Take (and ack) the next task message of `topic`, waiting for one to arrive."""
        return await take_task(self.channel, self.topology, topic, timeout=TIMEOUT)

    async def leftover(self, topic: str) -> TaskMessage | None:
        """A task message still waiting on `topic` (taken off the queue), or None."""
        queue = await self.channel.get_queue(self.topology.task_queue(topic), ensure=False)
        message = await queue.get(no_ack=False, fail=False)
        if message is None:
            return None
        await message.ack()
        return TaskMessage.model_validate_json(message.body)

    async def report(self, report: Any, *, reply: bool = True) -> None:
        """Publish a report with a broker confirm; with `reply`, ask for the engine's answer."""
        await self.publish(body_of(report), reply=reply)

    async def publish(self, body: bytes, *, reply: bool = True) -> None:
        exchange = await self.channel.get_exchange(self.topology.reports_exchange, ensure=False)
        message = aio_pika.Message(
            body, content_type="application/json", reply_to=self.reply_to if reply else None
        )
        await exchange.publish(message, REPORT_ROUTING_KEY)

    async def wait_for_notices(self, count: int, what: str) -> list[WorkerNotice]:
        async def enough() -> bool:
            return len(self.notices) >= count

        await wait_until(enough, timeout=TIMEOUT, what=what)
        return list(self.notices)


def body_of(report: Any) -> bytes:
    return orjson.dumps(report.model_dump(mode="json"))
