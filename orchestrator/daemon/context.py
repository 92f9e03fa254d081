"""What every engine transaction needs to know about the engine running it."""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.daemon.definitions import DefinitionCache


@dataclass(frozen=True)
class EngineContext:
    #: The definitions this engine compiled. (Who writes, and how long its outbox rows stay
    #: claimed by it, the store knows: see Store.)
    processes: DefinitionCache
