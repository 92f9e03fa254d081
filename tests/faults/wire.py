"""A relay the test puts on the wire between the engine and its workers, to duplicate,
reorder and corrupt their messages.

The engine runs in one namespace and the workers in another, so nothing connects them but
the relay: it consumes the engine's task queues and publishes into the workers' task queues,
and consumes the workers' report queue and publishes to the engine's report exchange (keeping
`reply_to`, so the engine's answers still reach the workers' inboxes). On the way it

- holds messages for a short window and forwards each window in reverse order, reversing the
  reports inside a batched message too (a completion can then overtake its own claim);
- forwards every DUPLICATE_EVERY-th message twice, with the same body and message id;
- after every ALTER_EVERY-th report message that carries a completion, sends that completion
  once more with other variables (a conflicting duplicate: the engine must record it and
  keep the first);
- every MALFORMED_EVERY-th message, injects a malformed one of its own (message ids
  `malformed-...`, or `mixed-...` for an array holding a bad report and a good duplicate).

It counts exactly what it forwarded and what it injected, so the test can hold the engine's
ledger and counters to those numbers. Each consumed message is acked only after everything
it became was confirmed by the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aio_pika
import orjson
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage

from orchestrator.broker.topology import (
    REPORT_ROUTING_KEY,
    Topology,
    declare_core,
    declare_task_queue,
)
from tests.faults.workload import MALFORMED_PREFIX
from tests.support.harness import wait_until

log = logging.getLogger(__name__)

WINDOW_S = 0.02
WINDOW_MESSAGES = 16
DUPLICATE_EVERY = 7
ALTER_EVERY = 25
MALFORMED_EVERY = 40


@dataclass
class WireCounts:
    tasks_forwarded: int = 0
    tasks_duplicated: int = 0
    malformed_tasks: int = 0
    reports_forwarded: int = 0
    #: Completed reports in the messages the workers sent.
    worker_completions: int = 0
    #: Completed reports in the copies of duplicated report messages (and mixed arrays).
    duplicated_completions: int = 0
    #: Completions sent again with other variables.
    altered_completions: int = 0
    #: Bad reports injected (a mixed array counts its bad element).
    malformed_reports: int = 0
    #: Windows forwarded in reverse order (of more than one message).
    reordered_windows: int = 0


def _bad_task_bodies() -> list[bytes]:
    return [
        b"this is not JSON",
        orjson.dumps({"v": 1, "type": "task", "task_id": "no-such-task"}),
        b"\xff\xfe\x00",
        b"[]",
    ]


def _bad_report_bodies() -> list[bytes]:
    unknown = str(uuid.uuid4())
    completed = {"v": 1, "type": "completed", "attempt": 1, "worker_id": "relay"}
    return [
        b'{"type": "completed", "task_id"',
        b"\xff\xfe\xfd",
        orjson.dumps({"type": "completed"}),
        orjson.dumps({"v": 1, "type": "teleported", "task_id": unknown, "attempt": 1}),
        b"[]",
        orjson.dumps({**completed, "task_id": unknown, "variables": {}}),
        orjson.dumps({**completed, "task_id": "order-17", "variables": {}}),
    ]


class WireRelay:
    def __init__(self, amqp_url: str, engine_side: str, worker_side: str, topics: list[str]):
        self.amqp_url = amqp_url
        self.engine_side = Topology(engine_side)
        self.worker_side = Topology(worker_side)
        self.topics = topics
        self.counts = WireCounts()
        #: Message ids of the malformed messages injected, by direction.
        self.malformed_task_ids: set[str] = set()
        self.malformed_report_ids: set[str] = set()
        self._connection: AbstractConnection | None = None
        self._out: AbstractChannel | None = None
        self._pumps: list[asyncio.Task[None]] = []
        self._bad_tasks = itertools.cycle(_bad_task_bodies())
        self._bad_reports = itertools.cycle([*_bad_report_bodies(), b"mixed"])
        self._last_completion: dict[str, Any] | None = None
        #: Messages taken from a queue and not yet acked (waiting, or being forwarded).
        self._holding = 0
        self.error: Exception | None = None

    async def start(self) -> WireRelay:
        self._connection = await aio_pika.connect(self.amqp_url)
        self._out = await self._connection.channel(publisher_confirms=True)
        setup = await self._connection.channel()
        await declare_core(setup, self.worker_side)
        tasks_in: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        reports_in: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        inbound = await self._connection.channel()
        await inbound.set_qos(prefetch_count=200)
        for topic in self.topics:
            await declare_task_queue(setup, self.worker_side, topic)
            queue = await declare_task_queue(inbound, self.engine_side, topic)
            await queue.consume(self._take(tasks_in))
        reports = await inbound.declare_queue(
            self.worker_side.reports_queue,
            durable=True,
            arguments=self.worker_side.queue_arguments(),
        )
        await reports.consume(self._take(reports_in))
        self._pumps = [
            asyncio.create_task(self._pump(tasks_in, self._forward_tasks)),
            asyncio.create_task(self._pump(reports_in, self._forward_reports)),
        ]
        return self

    def _take(
        self, inbox: asyncio.Queue[AbstractIncomingMessage]
    ) -> Callable[[AbstractIncomingMessage], Awaitable[None]]:
        async def take(message: AbstractIncomingMessage) -> None:
            self._holding += 1
            await inbox.put(message)

        return take

    async def wait_idle(self) -> None:
        """Wait until the relay holds nothing and nothing waits for it in the workers'
        report queue: all the (stopped) workers sent has been passed on."""

        async def idle() -> bool:
            assert self._connection is not None
            channel = await self._connection.channel()
            try:
                queue = await channel.declare_queue(self.worker_side.reports_queue, passive=True)
                waiting = queue.declaration_result.message_count
            finally:
                await channel.close()
            if self.error is not None:
                raise AssertionError(f"the relay failed: {self.error!r}")
            return self._holding == 0 and waiting == 0

        await wait_until(idle, timeout=30, what="the relay to pass on every report")

    async def close(self) -> None:
        for pump in self._pumps:
            pump.cancel()
        for pump in self._pumps:
            with contextlib.suppress(asyncio.CancelledError):
                await pump
        if self._connection is not None:
            await self._connection.close()

    async def _pump(
        self,
        inbox: asyncio.Queue[AbstractIncomingMessage],
        forward: Callable[[list[AbstractIncomingMessage]], Awaitable[None]],
    ) -> None:
        while True:
            window = [await inbox.get()]
            await asyncio.sleep(WINDOW_S)  # the hold that lets later messages overtake
            while not inbox.empty() and len(window) < WINDOW_MESSAGES:
                window.append(inbox.get_nowait())
            if len(window) > 1:
                self.counts.reordered_windows += 1
            try:
                await forward(list(reversed(window)))
                for message in window:
                    await message.ack()
            except Exception as exc:  # the counts are off now: the test must fail
                log.exception("relay: forwarding failed")
                self.error = exc
                return
            self._holding -= len(window)

    async def _publish(
        self, exchange: str, routing_key: str, body: bytes, message_id: str | None, **extra: Any
    ) -> None:
        assert self._out is not None
        target = await self._out.get_exchange(exchange, ensure=False)
        message = aio_pika.Message(
            body,
            message_id=message_id,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            **extra,
        )
        await target.publish(message, routing_key, mandatory=True)

    # --- engine -> workers -----------------------------------------------------------

    async def _forward_tasks(self, window: list[AbstractIncomingMessage]) -> None:
        exchange = self.worker_side.tasks_exchange
        for message in window:
            topic = message.routing_key or ""
            self.counts.tasks_forwarded += 1
            number = self.counts.tasks_forwarded
            copies = 2 if number % DUPLICATE_EVERY == 0 else 1
            for _ in range(copies):
                await self._publish(exchange, topic, message.body, message.message_id)
            self.counts.tasks_duplicated += copies - 1
            if number % MALFORMED_EVERY == 0:
                message_id = f"{MALFORMED_PREFIX}task-{number}"
                await self._publish(exchange, topic, next(self._bad_tasks), message_id)
                self.malformed_task_ids.add(message_id)
                self.counts.malformed_tasks += 1

    # --- workers -> engine -----------------------------------------------------------

    async def _forward_reports(self, window: list[AbstractIncomingMessage]) -> None:
        exchange = self.engine_side.reports_exchange
        altered: list[dict[str, Any]] = []
        for message in window:
            reports = orjson.loads(message.body)
            batch = reports if isinstance(reports, list) else [reports]
            body = orjson.dumps(batch[::-1]) if isinstance(reports, list) else message.body
            completions = [r for r in batch if r.get("type") == "completed"]
            self.counts.reports_forwarded += 1
            self.counts.worker_completions += len(completions)
            number = self.counts.reports_forwarded
            copies = 2 if number % DUPLICATE_EVERY == 0 else 1
            for _ in range(copies):
                await self._publish(
                    exchange,
                    REPORT_ROUTING_KEY,
                    body,
                    message.message_id,
                    reply_to=message.reply_to,
                )
            self.counts.duplicated_completions += (copies - 1) * len(completions)
            if completions:
                self._last_completion = completions[0]
                if number % ALTER_EVERY == 0:
                    altered.append({**completions[0], "variables": {"tampered": number}})
            if number % MALFORMED_EVERY == 0:
                await self._inject_bad_report(number)
        # After the originals, so the engine has applied or recorded the real one first.
        for report in altered:
            await self._publish(
                exchange, REPORT_ROUTING_KEY, orjson.dumps(report), f"altered-{uuid.uuid4()}"
            )
            self.counts.altered_completions += 1

    async def _inject_bad_report(self, number: int) -> None:
        exchange = self.engine_side.reports_exchange
        body = next(self._bad_reports)
        if body == b"mixed":
            if self._last_completion is None:
                return
            # An array with one bad report and one good (duplicate) one: the bad one is
            # dead-lettered alone, the good one is processed.
            body = orjson.dumps([{"v": 1, "type": "teleported"}, self._last_completion])
            message_id = f"mixed-{number}"
            self.counts.duplicated_completions += 1
        else:
            message_id = f"{MALFORMED_PREFIX}report-{number}"
        await self._publish(exchange, REPORT_ROUTING_KEY, body, message_id)
        self.malformed_report_ids.add(message_id)
        self.counts.malformed_reports += 1
