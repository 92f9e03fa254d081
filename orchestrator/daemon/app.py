"""The engine daemon: opens the store and the broker, then runs and supervises its loops
(the rounds, the reaper, the dispatch watch, the relay's) until it is stopped."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from collections.abc import Coroutine
from typing import Any

from aio_pika.abc import AbstractRobustConnection

from orchestrator import aio
from orchestrator.broker.batches import BatchConsumer
from orchestrator.broker.connection import connect
from orchestrator.broker.probe import QueueCounts, QueueProbe, queue_counts
from orchestrator.broker.publisher import Publisher
from orchestrator.broker.topology import Topology, declare_core
from orchestrator.config import Settings
from orchestrator.daemon import admin
from orchestrator.daemon.commands import OperatorCommands
from orchestrator.daemon.context import EngineContext
from orchestrator.daemon.definitions import DefinitionCache
from orchestrator.daemon.dispatch import DispatchWatch
from orchestrator.daemon.last_written import LastWrittenRows
from orchestrator.daemon.message_queue import MessageQueue
from orchestrator.daemon.messages import Messages
from orchestrator.daemon.reaper import reap_forever
from orchestrator.daemon.relay import Relay
from orchestrator.daemon.round_context import RoundContext
from orchestrator.daemon.rounds import ConsumerPair, Rounds
from orchestrator.daemon.sender import Sender
from orchestrator.daemon.supervisor import supervise
from orchestrator.daemon.timers import TimerScheduler
from orchestrator.store.store import Store
from orchestrator.store.unit_of_work import UnitOfWork

log = logging.getLogger(__name__)


class Engine:
    """One engine process. `run` opens it, supervises its loops until `stop` is set (or one
    of them dies), and closes it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topology = Topology(settings.namespace)
        self.stop = asyncio.Event()
        self.processes = DefinitionCache()
        self.engine_id = f"engine-{socket.gethostname()}-{os.getpid()}"
        self.context = EngineContext(self.processes)
        self.last_written = LastWrittenRows(settings.recent_instances)
        self._store: Store | None = None
        self._connection: AbstractRobustConnection | None = None
        self._publisher: Publisher | None = None
        self._relay: Relay | None = None
        self._sender: Sender | None = None
        self._commands: OperatorCommands | None = None
        self._rounds: Rounds | None = None
        self._messages: Messages | None = None
        self._message_consumer: BatchConsumer | None = None
        #: The consumers each round loop starts with (see `_consumer_pair`).
        self._consumers: list[ConsumerPair] = []

    async def run(self) -> None:
        await self.open()
        try:
            await supervise(
                {
                    **{
                        f"rounds-{i}": self.rounds.serve(pair, self._consumer_pair)
                        for i, pair in enumerate(self._consumers)
                    },
                    "reaper": reap_forever(
                        self.store, self.relay, self.context, self.settings, self.stop
                    ),
                    "timers": TimerScheduler(
                        self.store, self.sender, self.context, self.topology
                    ).run(self.stop),
                    "dispatch-watch": DispatchWatch(
                        self.store, self.connection, self.relay, self.context, self.settings
                    ).run(self.stop),
                    "relay-sweeper": self.relay.sweep_forever(0.5, self.stop),
                    "relay-deleter": self.relay.delete_forever(0.02, self.stop),
                    "messages": MessageQueue(
                        self.messages,
                        self.sender,
                        self.topology,
                        self.settings.max_report_bytes,
                    ).serve(self.message_consumer, self.stop),
                    "message-sweeper": self.messages.sweep_forever(1.0, self.stop),
                    **self._metrics_loops(),
                },
                self.stop,
            )
        finally:
            await self.close()

    def _metrics_loops(self) -> dict[str, Coroutine[Any, Any, None]]:
        """With ORCH_METRICS_PORT: the loop that reads the metrics' database gauges."""
        if self.settings.metrics_port is None:
            return {}
        probe = QueueProbe(self.connection)

        async def queues() -> QueueCounts:
            return await queue_counts(probe, self.topology, sorted(self.relay.task_topics))

        metrics = self.context.metrics
        self.relay.on_confirmed = metrics.confirmed
        return {"metrics": metrics.refresh_forever(self.store, self.stop, queues=queues)}

    async def open(self) -> None:
        if self.settings.metrics_port is not None:
            self.context.metrics.server.start(self.settings.metrics_port)
        topics = await self._open_store()
        await self._open_broker(topics)
        self._rounds = self._assemble_rounds()
        # One loop serves a consumer of each queue (see Rounds). Several such loops, each
        # with its own channels: while one round waits on PostgreSQL the next is already
        # being read and decided. A channel's acks (multiple=True) then only ever cover its
        # own loop's committed batches.
        for _ in range(self.settings.consumers_per_queue):
            self._consumers.append(await self._consumer_pair())
        self._message_consumer = await self._consumer(
            self.topology.messages_queue, 50, asyncio.Event()
        )
        log.info("engine %s started (namespace %s)", self.engine_id, self.settings.namespace)

    async def _open_store(self) -> set[str]:
        """Open the store and bring its schema up to date; the topics of the deployed
        definitions."""
        settings = self.settings
        self._store = await Store.open(
            settings.database_url,
            engine_id=self.engine_id,
            outbox_claim_ms=settings.outbox_claim_ms,
            size=settings.pool_size,
            limits=settings.session_limits(),
            application_name=f"orchestrator {self.engine_id}",
        )
        self._store.on_commit = self._committed
        async with self.store.session() as db:
            await db.migrate()
            topics = await admin.deployed_topics(db)
            if not await db.autovacuum_on():
                log.warning(
                    "autovacuum is off on this PostgreSQL server: the dead rows every task "
                    "leaves in the outbox and task tables will pile up; turn it on"
                )
        return topics

    def _committed(self, uow: UnitOfWork) -> None:
        """After each commit: log the incidents it raised (with their ids, for JSON logs),
        and count it for the metrics when they are served (nothing is counted otherwise)."""
        for incident_id, instance_id, task_id, node_id, kind, message, _, attempt in uow.incidents:
            log.warning(
                "incident %s (%s) at %s of instance %s: %s",
                incident_id,
                kind,
                node_id,
                instance_id,
                message,
                extra={"instance_id": instance_id, "task_id": task_id, "attempt": attempt},
            )
        if self.settings.metrics_port is not None:
            self.context.metrics.committed(uow)

    async def _open_broker(self, topics: set[str]) -> None:
        """Connect, declare the topology, and open the publisher and the relay."""
        self._connection = await connect(self.settings.amqp_url, name=self.engine_id)
        setup = await self._connection.channel()
        await declare_core(setup, self.topology)
        self._publisher = await Publisher.open(self._connection)
        self._relay = Relay(self.store, self._publisher, setup, self.topology)
        await self.relay.ensure_queues(topics)
        self._sender = Sender(self.store, self.relay, self._publisher, self.topology)

    def _assemble_rounds(self) -> Rounds:
        self._messages = Messages(self.store, self.context, self.sender, self.topology)
        self._commands = OperatorCommands(
            self.store,
            self.relay,
            self.sender,
            self.context,
            self.topology,
            self.settings,
            self._messages,
        )
        context = RoundContext(
            self.store,
            self.context,
            self.last_written,
            self.sender,
            self.settings,
            self.topology,
            self.stop,
        )
        return Rounds(context, self._commands)

    async def _consumer_pair(self) -> ConsumerPair:
        """A consumer of the commands queue and one of the reports queue, served by one loop
        (they share the event that wakes it)."""
        arrived = asyncio.Event()
        reports = await self._consumer(
            self.topology.reports_queue, self.settings.report_messages_per_batch, arrived
        )
        commands = await self._consumer(self.topology.commands_queue, 200, arrived)
        return commands, reports

    async def _consumer(
        self, queue_name: str, batch_size: int, arrived: asyncio.Event
    ) -> BatchConsumer:
        channel = await self.connection.channel()
        await channel.set_qos(prefetch_count=batch_size * 2)
        # Declared (not just looked up) so the robust channel restores the consumer after a
        # broker restart; the declaration is idempotent.
        queue = await channel.declare_queue(
            queue_name, durable=True, arguments=self.topology.queue_arguments()
        )
        consumer = BatchConsumer(queue, max_batch=batch_size, arrived=arrived, channel=channel)
        await consumer.start()
        return consumer

    async def close(self) -> None:
        if self._commands is not None:
            await self._commands.wait(timeout=10)
        if self._sender is not None:
            await self._sender.wait(timeout=10)
        if self._relay is not None:  # what the last batches published, so no sweep resends it
            await self._relay.delete_confirmed()
        if self._connection is not None:
            await self._connection.close()
        if self._store is not None:
            await self._store.close()
        await self.context.metrics.server.stop()
        log.info("engine %s stopped", self.engine_id)

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stop.set)

    @property
    def store(self) -> Store:
        if self._store is None:
            raise RuntimeError("engine is not open")
        return self._store

    @property
    def connection(self) -> AbstractRobustConnection:
        if self._connection is None:
            raise RuntimeError("engine is not open")
        return self._connection

    @property
    def publisher(self) -> Publisher:
        if self._publisher is None:
            raise RuntimeError("engine is not open")
        return self._publisher

    @property
    def relay(self) -> Relay:
        if self._relay is None:
            raise RuntimeError("engine is not open")
        return self._relay

    @property
    def sender(self) -> Sender:
        if self._sender is None:
            raise RuntimeError("engine is not open")
        return self._sender

    @property
    def messages(self) -> Messages:
        if self._messages is None:
            raise RuntimeError("engine is not open")
        return self._messages

    @property
    def message_consumer(self) -> BatchConsumer:
        if self._message_consumer is None:
            raise RuntimeError("engine is not open")
        return self._message_consumer

    @property
    def rounds(self) -> Rounds:
        if self._rounds is None:
            raise RuntimeError("engine is not open")
        return self._rounds


def run_engine(settings: Settings) -> None:
    async def main() -> None:
        engine = Engine(settings)
        engine.install_signal_handlers()
        await engine.run()

    aio.run(main())
