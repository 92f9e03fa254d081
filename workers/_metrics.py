"""A worker's Prometheus metrics (served with ORCH_METRICS_PORT; docs/operations.md)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from orchestrator.metrics_http import MetricsServer
from orchestrator.model.wire import BpmnErrorReport, Completed, Failed, Report

#: Seconds a handler ran.
HANDLER_SECONDS_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


def outcome_of(report: Report | None) -> str:
    """The `outcome` label of a handler's result (None: it was stopped, its task revoked)."""
    if isinstance(report, Completed):
        return "completed"
    if isinstance(report, Failed):
        return "failed"
    if isinstance(report, BpmnErrorReport):
        return "bpmn_error"
    return "revoked"


class WorkerMetrics:
    """One worker's metrics, in a registry of its own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.tasks = Counter(
            "orch_worker_tasks",
            "Tasks this worker's handlers finished, by topic and outcome",
            ["topic", "outcome"],
            registry=self.registry,
        )
        self.seconds = Histogram(
            "orch_worker_task_seconds",
            "Seconds a handler ran, by topic",
            ["topic"],
            buckets=HANDLER_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "orch_worker_tasks_in_flight",
            "Handlers running now, by topic",
            ["topic"],
            registry=self.registry,
        )
        self.server = MetricsServer(self.registry)
