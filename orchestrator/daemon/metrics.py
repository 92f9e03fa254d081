"""The engine's Prometheus metrics (docs/operations.md).

The hot path only adds to dicts in memory: the store hands each UnitOfWork to `committed`
once its transaction committed, and the counts are turned into metric families when
Prometheus scrapes (`EngineCollector`, in the HTTP server's thread). Labels are bounded:
an event name, a topic, a process key, a status; never an instance or a task id.

The gauges read from PostgreSQL (open incidents, the outbox's backlog) are refreshed by
`refresh_forever`, an asyncio task of the engine, every few seconds: a scrape never waits on
the database and never touches the engine's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from orchestrator.broker.probe import QueueCounts
from orchestrator.broker.topology import OUTBOX_TO_COMMANDS, OUTBOX_TO_REPORTS
from orchestrator.metrics_http import MetricsServer
from orchestrator.store.unit_of_work import PublishedRow, UnitOfWork

if TYPE_CHECKING:
    from orchestrator.store.store import Store

log = logging.getLogger(__name__)

#: A task row's status after a write, and the counter it moves (per topic).
_SETTLED = {
    "completed": "completed",
    "retry_wait": "retried",
    "incident": "incidents",
    "cancelled": "cancelled",
}

#: Reports (or starts) applied in one round.
ROUND_SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
#: Seconds one round took, parse to commit.
ROUND_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
#: Seconds from the commit that wrote a task message to the broker's confirm of it.
DISPATCH_SECONDS_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30
)  # fmt: skip
_ENGINE_ROUTES = frozenset({OUTBOX_TO_REPORTS, OUTBOX_TO_COMMANDS})
#: Reads the queues' depths and consumers (the engine's QueueProbe over the task topics).
QueueReader = Callable[[], Awaitable[QueueCounts]]


@dataclass
class DatabaseGauges:
    """What `refresh_forever` last read from PostgreSQL."""

    open_incidents: dict[str, int] = field(default_factory=dict)
    outbox_waiting: int = 0
    outbox_oldest_s: float = 0.0
    #: The broker's side, read with them (None: not read, or the broker was away).
    queues: QueueCounts | None = None
    #: time.time() when the last read began (0: never).
    read_at: float = 0.0


class EngineMetrics:
    """One engine's metrics, in a registry of its own (several engines can share a process:
    the tests' do)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._lock = threading.Lock()
        self.events: dict[str, int] = {}
        #: (counter, topic) -> n, counter one of created, completed, retried, incidents...
        self.tasks: dict[tuple[str, str], int] = {}
        #: (process key, state) -> n, state started, completed, cancelled...
        self.instances: dict[tuple[str, str], int] = {}
        self.gauges = DatabaseGauges()
        self.round_reports = Histogram(
            "orch_round_reports",
            "Reports applied in one report round",
            buckets=ROUND_SIZE_BUCKETS,
            registry=self.registry,
        )
        self.round_seconds = Histogram(
            "orch_round_seconds",
            "Seconds one report round took, parsing to commit and acks",
            buckets=ROUND_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.dispatch_seconds = Histogram(
            "orch_task_dispatch_seconds",
            "Seconds from the commit that wrote a task message to the broker's confirm of it "
            "(messages the sweeper republishes are counted, not timed)",
            buckets=DISPATCH_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(EngineCollector(self))
        #: /metrics over HTTP, when the engine is given a port (Engine.open).
        self.server = MetricsServer(self.registry)

    def committed(self, uow: UnitOfWork) -> None:
        """Count what a committed UnitOfWork wrote (Store.on_commit)."""
        with self._lock:
            events = self.events
            for name, by in uow.counters.items():
                events[name] = events.get(name, 0) + by
            tasks = self.tasks
            for task in uow.new_tasks:
                key = ("created", task.topic)
                tasks[key] = tasks.get(key, 0) + 1
            for task in uow.changed_tasks.values():
                settled = _SETTLED.get(task.status)
                if settled is not None:
                    key = (settled, task.topic)
                    tasks[key] = tasks.get(key, 0) + 1
            for event, topic in uow.task_events:
                key = (event, topic)
                tasks[key] = tasks.get(key, 0) + 1
            instances = self.instances
            for row, _ in uow.new_instances:
                key = (row.process_key, "started")
                instances[key] = instances.get(key, 0) + 1
            for ended in uow.instance_ends:
                instances[ended] = instances.get(ended, 0) + 1

    def confirmed(self, rows: list[PublishedRow], now: float) -> None:
        """Count the task messages the broker confirmed (Relay.on_confirmed), and time those
        this engine wrote itself."""
        observe = self.dispatch_seconds.observe
        dispatched: dict[str, int] = {}
        for row in rows:
            topic = row.message.routing_key
            if topic in _ENGINE_ROUTES:
                continue
            dispatched[topic] = dispatched.get(topic, 0) + 1
            if row.written_at:
                observe(now - row.written_at)
        with self._lock:
            tasks = self.tasks
            for topic, n in dispatched.items():
                key = ("dispatched", topic)
                tasks[key] = tasks.get(key, 0) + n

    def round(self, reports: int, seconds: float) -> None:
        self.round_reports.observe(reports)
        self.round_seconds.observe(seconds)

    def snapshot(
        self,
    ) -> tuple[dict[str, int], dict[tuple[str, str], int], dict[tuple[str, str], int]]:
        with self._lock:
            return dict(self.events), dict(self.tasks), dict(self.instances)

    async def refresh_forever(
        self,
        store: Store,
        stop: asyncio.Event,
        every_s: float = 5.0,
        queues: QueueReader | None = None,
    ) -> None:
        """Read the database gauges (and the queues, with `queues`) every `every_s`, until
        `stop`; a failed read is logged and tried again next time."""
        while not stop.is_set():
            # stamped with the read's start: every value is at least as new as the stamp
            started = time.time()
            try:
                async with store.session(timeout=every_s) as db:
                    incidents, waiting, oldest = await db.metrics_gauges()
                counts = await self._read_queues(queues, every_s)
                self.gauges = DatabaseGauges(incidents, waiting, oldest, counts, started)
            except Exception as exc:  # the database away: the gauges keep their last values
                log.debug("metrics: could not read the gauges: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)

    @staticmethod
    async def _read_queues(queues: QueueReader | None, timeout_s: float) -> QueueCounts | None:
        if queues is None:
            return None
        try:
            return await asyncio.wait_for(queues(), timeout_s)
        except Exception as exc:  # the broker away: its gauges are left out until it is back
            log.debug("metrics: could not read the queues: %s", exc)
            return None


class EngineCollector(Collector):
    """The engine's counts as metric families, built at scrape time."""

    def __init__(self, metrics: EngineMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        events, tasks, instances = self._metrics.snapshot()
        family = CounterMetricFamily(
            "orch_engine_events",
            "What the engine's committed transactions counted (the engine_counters names)",
            labels=["event"],
        )
        for name in sorted(events):
            family.add_metric([name], events[name])
        yield family
        for counter, text in (
            ("created", "Tasks created"),
            ("dispatched", "Task messages the broker confirmed (first sends and re-sends)"),
            ("claimed", "Claims granted: a worker took the task"),
            ("expired", "Leases that lapsed without an outcome"),
            ("completed", "Tasks completed"),
            ("retried", "Failed attempts of tasks that will be tried again"),
            ("incidents", "Tasks that stopped on an incident"),
            ("cancelled", "Tasks cancelled"),
        ):
            family = CounterMetricFamily(f"orch_tasks_{counter}", text, labels=["topic"])
            for (name, topic), n in sorted(tasks.items()):
                if name == counter:
                    family.add_metric([topic], n)
            yield family
        family = CounterMetricFamily(
            "orch_instances",
            "Process instances started and ended, by process key and state",
            labels=["process", "state"],
        )
        for (process, state), n in sorted(instances.items()):
            family.add_metric([process, state], n)
        yield family
        yield from self._gauges()

    def _gauges(self) -> Iterator[Metric]:
        gauges = self._metrics.gauges
        if not gauges.read_at:
            return
        family = GaugeMetricFamily(
            "orch_open_incidents", "Open incidents, by process key", labels=["process"]
        )
        for process, n in sorted(gauges.open_incidents.items()):
            family.add_metric([process], n)
        yield family
        yield GaugeMetricFamily(
            "orch_outbox_waiting", "Outbox rows not yet published", value=gauges.outbox_waiting
        )
        yield GaugeMetricFamily(
            "orch_outbox_oldest_seconds",
            "Age of the oldest outbox row",
            value=gauges.outbox_oldest_s,
        )
        if gauges.queues is not None:
            yield from _queue_gauges(gauges.queues)
        yield GaugeMetricFamily(
            "orch_metrics_db_read_timestamp_seconds",
            "When the gauges above were read from PostgreSQL",
            value=gauges.read_at,
        )


def _queue_gauges(counts: QueueCounts) -> Iterator[Metric]:
    depth = GaugeMetricFamily(
        "orch_queue_messages", "Ready messages in a topic's task queue", labels=["topic"]
    )
    consumers = GaugeMetricFamily(
        "orch_queue_consumers", "Consumers (workers) of a topic's task queue", labels=["topic"]
    )
    for topic, (ready, readers) in sorted(counts.topics.items()):
        depth.add_metric([topic], ready)
        consumers.add_metric([topic], readers)
    yield depth
    yield consumers
    yield GaugeMetricFamily(
        "orch_reports_waiting", "Reports waiting in the reports queue", value=counts.reports_ready
    )
