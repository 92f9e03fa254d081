"""What every engine transaction needs to know about the engine running it."""

from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator.daemon.definitions import DefinitionCache
from orchestrator.daemon.metrics import EngineMetrics


@dataclass(frozen=True)
class EngineContext:
    #: The definitions this engine compiled. (Who writes, and how long its outbox rows stay
    #: claimed by it, the store knows: see Store.)
    processes: DefinitionCache
    #: What the engine counts for Prometheus (served only with ORCH_METRICS_PORT).
    metrics: EngineMetrics = field(default_factory=EngineMetrics)
