"""The engine's and the workers' metrics: their names and labels, as Prometheus reads them."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.broker.probe import QueueCounts
from orchestrator.daemon.metrics import EngineMetrics
from orchestrator.metrics_http import MetricsPortInUse, MetricsServer
from orchestrator.model.wire import Completed
from orchestrator.store.unit_of_work import (
    InstanceRow,
    OutboxMessage,
    PublishedRow,
    TaskRow,
    UnitOfWork,
)
from workers._metrics import WorkerMetrics, outcome_of

DASHBOARD = Path(__file__).parents[2] / "deploy" / "grafana" / "orchestrator-dashboard.json"


def _samples(registry: object) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()  # type: ignore[arg-type]
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _task(task_id: str, topic: str, status: str) -> TaskRow:
    return TaskRow(
        id=task_id,
        instance_id="i",
        node_id="n",
        topic=topic,
        status=status,  # type: ignore[arg-type]
        attempt=1,
        retries_left=0,
        lock_ms=1000,
        worker_id=None,
        lease_expires_at=None,
        lease_expiries=0,
    )


def test_engine_counts_what_committed_units_of_work_wrote() -> None:
    metrics = EngineMetrics()
    uow = UnitOfWork()
    uow.count("tasks_created", 2)
    uow.count("instances_completed")
    uow.new_tasks += [_task("t1", "charge", "queued"), _task("t2", "ship", "queued")]
    uow.changed_tasks["t3"] = _task("t3", "charge", "completed")
    uow.changed_tasks["t4"] = _task("t4", "charge", "claimed")
    uow.changed_tasks["t5"] = _task("t5", "ship", "incident")
    uow.new_instances.append((InstanceRow(1, "order", None, "running"), None))  # type: ignore[arg-type]
    uow.instance_ends.append(("order", "completed"))
    metrics.committed(uow)
    metrics.committed(uow)
    metrics.round(120, 0.03)
    samples = _samples(metrics.registry)
    assert samples[("orch_engine_events_total", (("event", "tasks_created"),))] == 4
    assert samples[("orch_engine_events_total", (("event", "instances_completed"),))] == 2
    assert samples[("orch_tasks_created_total", (("topic", "charge"),))] == 2
    assert samples[("orch_tasks_created_total", (("topic", "ship"),))] == 2
    assert samples[("orch_tasks_completed_total", (("topic", "charge"),))] == 2
    assert samples[("orch_tasks_incidents_total", (("topic", "ship"),))] == 2
    assert ("orch_tasks_completed_total", (("topic", "ship"),)) not in samples
    started = ("orch_instances_total", (("process", "order"), ("state", "started")))
    completed = ("orch_instances_total", (("process", "order"), ("state", "completed")))
    assert samples[started] == 2 and samples[completed] == 2
    assert samples[("orch_round_reports_count", ())] == 1
    assert samples[("orch_round_reports_sum", ())] == 120
    assert samples[("orch_round_seconds_sum", ())] == 0.03
    # The database gauges appear once they were read.
    assert not any(name.startswith("orch_outbox") for name, _ in samples)


def test_engine_counts_claims_expiries_and_confirmed_task_messages() -> None:
    metrics = EngineMetrics()
    uow = UnitOfWork()
    uow.task_events += [("claimed", "charge"), ("claimed", "charge"), ("expired", "ship")]
    metrics.committed(uow)
    rows = [
        PublishedRow(1, OutboxMessage("charge", "m1", b"{}"), written_at=100.0),
        PublishedRow(2, OutboxMessage("charge", "m2", b"{}"), written_at=99.0),
        PublishedRow(3, OutboxMessage("ship", "m3", b"{}")),  # swept: counted, not timed
        PublishedRow(4, OutboxMessage("~reports", "m4", b"{}"), written_at=100.0),
    ]
    metrics.confirmed(rows, now=100.5)
    samples = _samples(metrics.registry)
    assert samples[("orch_tasks_claimed_total", (("topic", "charge"),))] == 2
    assert samples[("orch_tasks_expired_total", (("topic", "ship"),))] == 1
    assert samples[("orch_tasks_dispatched_total", (("topic", "charge"),))] == 2
    assert samples[("orch_tasks_dispatched_total", (("topic", "ship"),))] == 1
    assert ("orch_tasks_dispatched_total", (("topic", "~reports"),)) not in samples
    assert samples[("orch_task_dispatch_seconds_count", ())] == 2
    assert samples[("orch_task_dispatch_seconds_sum", ())] == 2.0


def test_engine_gauges_once_read() -> None:
    metrics = EngineMetrics()
    metrics.gauges.open_incidents = {"order": 3}
    metrics.gauges.outbox_waiting = 7
    metrics.gauges.outbox_oldest_s = 1.5
    metrics.gauges.read_at = 1_700_000_000.0
    samples = _samples(metrics.registry)
    assert samples[("orch_open_incidents", (("process", "order"),))] == 3
    assert samples[("orch_outbox_waiting", ())] == 7
    assert samples[("orch_outbox_oldest_seconds", ())] == 1.5
    assert not any(name.startswith("orch_queue") for name, _ in samples)
    metrics.gauges.queues = QueueCounts(4, {"charge": (12, 2)})
    samples = _samples(metrics.registry)
    assert samples[("orch_queue_messages", (("topic", "charge"),))] == 12
    assert samples[("orch_queue_consumers", (("topic", "charge"),))] == 2
    assert samples[("orch_reports_waiting", ())] == 4


def test_several_engines_in_one_process_have_registries_of_their_own() -> None:
    first, second = EngineMetrics(), EngineMetrics()
    uow = UnitOfWork()
    uow.count("timers_fired")
    first.committed(uow)
    assert _samples(first.registry)[("orch_engine_events_total", (("event", "timers_fired"),))]
    assert ("orch_engine_events_total", (("event", "timers_fired"),)) not in _samples(
        second.registry
    )


def test_worker_metric_names() -> None:
    metrics = WorkerMetrics()
    metrics.tasks.labels("charge", "completed").inc()
    metrics.seconds.labels("charge").observe(0.2)
    metrics.in_flight.labels("charge").inc()
    samples = _samples(metrics.registry)
    completed = ("orch_worker_tasks_total", (("outcome", "completed"), ("topic", "charge")))
    assert samples[completed] == 1
    assert samples[("orch_worker_task_seconds_count", (("topic", "charge"),))] == 1
    assert samples[("orch_worker_tasks_in_flight", (("topic", "charge"),))] == 1
    assert WorkerMetrics().registry is not metrics.registry


def test_worker_outcomes() -> None:
    done = Completed(task_id="t", attempt=1, worker_id="w", variables={})
    assert outcome_of(done) == "completed"
    assert outcome_of(None) == "revoked"


def test_every_metric_the_dashboard_queries_exists() -> None:
    """The Grafana dashboard in deploy/ asks only for series the engine and workers export."""
    dashboard = json.loads(DASHBOARD.read_text())
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        for name in re.findall(r"\borch_[a-z_]+", target["expr"])
    }
    engine = EngineMetrics()
    uow = UnitOfWork()
    uow.count("tasks_created")
    uow.new_tasks.append(_task("t1", "charge", "queued"))
    for status in ("completed", "retry_wait", "incident", "cancelled"):
        uow.changed_tasks[status] = _task(status, "charge", status)
    uow.task_events += [("claimed", "charge"), ("expired", "charge")]
    uow.instance_ends.append(("order", "completed"))
    engine.committed(uow)
    engine.confirmed([PublishedRow(1, OutboxMessage("charge", "m", b"{}"), 1.0)], 2.0)
    engine.round(1, 0.01)
    engine.gauges.open_incidents = {"order": 1}
    engine.gauges.queues = QueueCounts(0, {"charge": (0, 1)})
    engine.gauges.read_at = 1.0
    worker = WorkerMetrics()
    worker.tasks.labels("charge", "completed").inc()
    worker.seconds.labels("charge").observe(0.2)
    worker.in_flight.labels("charge").inc()
    exported = {name for name, _ in _samples(engine.registry)} | {
        name for name, _ in _samples(worker.registry)
    }
    assert queried, "the dashboard queries nothing"
    assert queried <= exported, sorted(queried - exported)


def test_a_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = MetricsServer(CollectorRegistry())
        with pytest.raises(MetricsPortInUse, match=f"ORCH_METRICS_PORT {port}"):
            server.start(port, addr="127.0.0.1")
