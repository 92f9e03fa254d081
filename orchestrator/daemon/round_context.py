"""What every part of the engine's rounds works with (see rounds.py)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from orchestrator.broker.topology import Topology
from orchestrator.config import Settings
from orchestrator.daemon.context import EngineContext
from orchestrator.daemon.last_written import LastWrittenRows
from orchestrator.daemon.sender import Sender
from orchestrator.store.store import Store


@dataclass(frozen=True)
class RoundContext:
    store: Store
    #: What the batches of a round are given (see StartBatch, ReportBatch).
    engine: EngineContext
    last_written: LastWrittenRows
    sender: Sender
    settings: Settings
    topology: Topology
    #: Set when the engine stops: retries of an unreachable database stop with it.
    stop: asyncio.Event

    @property
    def give_back_s(self) -> float:
        """How long a round retries an unreachable database before it gives its messages
        back to the broker."""
        return self.settings.db_give_back_after_ms / 1000


class RoundPart:
    """A part of the engine's rounds (the loops, the reports' side, the commands' side): it
    keeps what the RoundContext holds as attributes of its own (read once per use on the hot
    path, not through the context)."""

    def __init__(self, rounds: RoundContext) -> None:
        self._store = rounds.store
        self._context = rounds.engine
        self._last_written = rounds.last_written
        self._sender = rounds.sender
        self._settings = rounds.settings
        self._topology = rounds.topology
        self._stop = rounds.stop
        self._give_back_s = rounds.give_back_s
