"""Messages set aside because another session holds the rows they need.

A round never waits on a lock another engine holds (that engine may be frozen): the reports
and starts that need such rows are held here, unacked, and tried again shortly after, with a
growing pause, for as long as the lock stays. PostgreSQL ends a stalled holder's transaction
within seconds (see SessionLimits), so the wait is bounded by that, not by the holder.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from aio_pika.abc import AbstractIncomingMessage
from aiormq.exceptions import ChannelInvalidStateError

Item = TypeVar("Item")

FIRST_PAUSE_S = 0.02
LONGEST_PAUSE_S = 0.5


@dataclass
class Held(Generic[Item]):
    """A message with the parts of it still to be done (a report message can carry many)."""

    message: AbstractIncomingMessage
    items: list[Item]
    tries: int = 0
    due: float = 0.0

    def channel_open(self) -> bool:
        """False once the delivery's channel closed: the broker requeued it, so holding it
        on here would only do its work twice."""
        try:
            return not self.message.channel.is_closed
        except ChannelInvalidStateError:
            return False


@dataclass
class HeldMessages(Generic[Item]):
    _queue: list[tuple[float, int, Held[Item]]] = field(default_factory=list)
    _order: itertools.count[int] = field(default_factory=itertools.count)
    #: Times a message was set aside (first time and again): for the engine's counters.
    holds: int = 0

    def __len__(self) -> int:
        return len(self._queue)

    def hold(self, held: Held[Item], now: float) -> None:
        """Set aside until a pause that doubles with each try has passed."""
        pause = min(FIRST_PAUSE_S * 2**held.tries, LONGEST_PAUSE_S)
        held.tries += 1
        held.due = now + pause
        self.holds += 1
        heapq.heappush(self._queue, (held.due, next(self._order), held))

    def next_due(self) -> float | None:
        return self._queue[0][0] if self._queue else None

    def take_due(self, now: float) -> list[Held[Item]]:
        """The messages whose pause is over, in the order they were first set aside."""
        due: list[Held[Item]] = []
        while self._queue and self._queue[0][0] <= now:
            _, _, held = heapq.heappop(self._queue)
            if held.channel_open():
                due.append(held)
        return due
