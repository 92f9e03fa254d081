"""What every engine transaction needs to know about the engine running it."""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.daemon.definitions import DefinitionCache


@dataclass(frozen=True)
class EngineContext:
    processes: DefinitionCache
    #: Outbox rows stay claimed by their engine this long before any sweeper may take them.
    outbox_claim_ms: int
    #: Counters are kept per engine, so replicas do not contend on one row.
    engine_id: str
