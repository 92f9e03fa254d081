"""Exchange and queue names, and their idempotent declaration.

See docs/wire-protocol.md; rabbitmq/definitions.json holds the same for the default namespace.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue

REPORT_ROUTING_KEY = "report"
COMMAND_ROUTING_KEY = "command"
DEAD_REASON_HEADER = "x-orch-dead-reason"
#: Outbox rows whose message goes to the engines' own queues, not to a task queue: a call
#: activity's start of its child, the child's outcome for its caller, a child's cancel.
#: A topic never starts with "~".
OUTBOX_TO_REPORTS = "~reports"
OUTBOX_TO_COMMANDS = "~commands"
#: On task messages: when the engine published them, right after commit (Unix ms as text,
#: with a fraction).
PUBLISHED_AT_HEADER = "x-orch-published-at-ms"


@dataclass(frozen=True)
class Topology:
    namespace: str

    @property
    def tasks_exchange(self) -> str:
        return f"{self.namespace}.tasks"

    @property
    def reports_exchange(self) -> str:
        return f"{self.namespace}.reports"

    @property
    def reports_queue(self) -> str:
        return f"{self.namespace}.reports"

    @property
    def commands_exchange(self) -> str:
        return f"{self.namespace}.commands"

    @property
    def commands_queue(self) -> str:
        return f"{self.namespace}.commands"

    @property
    def messages_exchange(self) -> str:
        """Where any producer publishes messages for waiting instances (fanout: any key)."""
        return f"{self.namespace}.messages"

    @property
    def messages_queue(self) -> str:
        return f"{self.namespace}.messages"

    @property
    def dead_exchange(self) -> str:
        return f"{self.namespace}.dead"

    @property
    def dead_queue(self) -> str:
        return f"{self.namespace}.dead"

    def task_queue(self, topic: str) -> str:
        return f"{self.namespace}.task.{topic}"

    def worker_inbox(self, worker_id: str) -> str:
        """A worker's own queue: answers to its reports, and revocations."""
        return f"{self.namespace}.worker.{worker_id}"

    def queue_arguments(self) -> dict[str, Any]:
        return {"x-dead-letter-exchange": self.dead_exchange}


async def declare_core(channel: AbstractChannel, topology: Topology) -> None:
    """Declare the exchanges and the engine's queues; a no-op when they already exist."""
    dead = await channel.declare_exchange(
        topology.dead_exchange, aio_pika.ExchangeType.FANOUT, durable=True
    )
    dead_queue = await channel.declare_queue(topology.dead_queue, durable=True)
    await dead_queue.bind(dead, routing_key="")
    await channel.declare_exchange(
        topology.tasks_exchange, aio_pika.ExchangeType.DIRECT, durable=True
    )
    for exchange_name, queue_name, key in (
        (topology.reports_exchange, topology.reports_queue, REPORT_ROUTING_KEY),
        (topology.commands_exchange, topology.commands_queue, COMMAND_ROUTING_KEY),
    ):
        exchange = await channel.declare_exchange(
            exchange_name, aio_pika.ExchangeType.DIRECT, durable=True
        )
        queue = await channel.declare_queue(
            queue_name, durable=True, arguments=topology.queue_arguments()
        )
        await queue.bind(exchange, routing_key=key)
    messages = await channel.declare_exchange(
        topology.messages_exchange, aio_pika.ExchangeType.FANOUT, durable=True
    )
    messages_queue = await channel.declare_queue(
        topology.messages_queue, durable=True, arguments=topology.queue_arguments()
    )
    await messages_queue.bind(messages, routing_key="")


async def declare_task_queue(
    channel: AbstractChannel, topology: Topology, topic: str
) -> AbstractQueue:
    exchange: AbstractExchange = await channel.declare_exchange(
        topology.tasks_exchange, aio_pika.ExchangeType.DIRECT, durable=True
    )
    queue = await channel.declare_queue(
        topology.task_queue(topic), durable=True, arguments=topology.queue_arguments()
    )
    await queue.bind(exchange, routing_key=topic)
    return queue


async def delete_namespace(amqp_url: str, namespace: str, topics: Iterable[str]) -> None:
    """Delete every queue and exchange of a namespace (its task queues: those of `topics`),
    so the durable ones a test or a trial declared do not pile up in the broker."""
    topology = Topology(namespace)
    queues = [topology.reports_queue, topology.commands_queue, topology.dead_queue]
    queues += [topology.messages_queue, *(topology.task_queue(topic) for topic in topics)]
    exchanges = [
        topology.tasks_exchange,
        topology.reports_exchange,
        topology.commands_exchange,
        topology.dead_exchange,
        topology.messages_exchange,
    ]
    connection = await aio_pika.connect(amqp_url)
    try:
        for queue in queues:  # a failed delete closes its channel: one channel each
            channel = await connection.channel()
            with contextlib.suppress(Exception):
                await channel.queue_delete(queue)
        for exchange in exchanges:
            channel = await connection.channel()
            with contextlib.suppress(Exception):
                await channel.exchange_delete(exchange)
    finally:
        await connection.close()
