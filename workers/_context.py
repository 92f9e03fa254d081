"""What a handler sees of its task."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from workers._durations import from_ms, to_ms


@dataclass(frozen=True)
class TaskInfo:
    task_id: str
    """Id of the task; the same for every attempt."""
    attempt: int
    """1 for the first delivery, then one more for each retry or expired lease."""
    retries_left: int
    """Failed attempts still allowed by the retry policy after this one."""
    topic: str
    instance_id: str
    process_key: str
    node_id: str
    """Id of the service task in the process definition."""
    business_key: str | None
    lock_ms: int
    """The visibility deadline in milliseconds, as on the wire (`lock_s` in seconds): how long
    this worker holds the task without extending."""
    idempotency_key: str
    """Pass to the services the handler calls so a repeated attempt has no second effect."""
    created_at_ms: int = 0
    """When the engine decided this attempt (Unix ms), just before its transaction wrote it."""
    published_at_ms: float | None = None
    """When the engine published this attempt, right after the commit (Unix ms; from the
    message's `x-orch-published-at-ms` header): the dispatch latency starts here."""
    previous_error: str | None = None
    """Why the previous attempt ended without an outcome: its failure message, an expired
    lease or a release. None on the first attempt."""
    previous_error_details: str | None = None
    """The previous failure's details (a traceback, say), when it sent any."""
    traceparent: str | None = None
    """The instance's W3C trace context, from the task message's `traceparent` header: one
    trace id for the whole instance (its start, every task, every handler). None when the
    message had none (an engine of an older version)."""

    @property
    def lock_s(self) -> float:
        """The visibility deadline in seconds."""
        return self.lock_ms / 1000


@dataclass(frozen=True)
class LockStatus:
    held: bool
    """False: another worker has the task now, or it is closed. Stop working on it."""
    cancelled: bool
    """The instance was cancelled meanwhile."""


class TaskContext:
    """Handed to every handler: the task's variables and identity, and its lock."""

    def __init__(
        self,
        info: TaskInfo,
        variables: dict[str, Any],
        extend: Callable[[int], Awaitable[LockStatus]],
    ) -> None:
        self.info = info
        self.variables = variables
        self._extend = extend

    @property
    def idempotency_key(self) -> str:
        return self.info.idempotency_key

    @property
    def attempt(self) -> int:
        return self.info.attempt

    @property
    def business_key(self) -> str | None:
        return self.info.business_key

    @property
    def retries_left(self) -> int:
        return self.info.retries_left

    @property
    def previous_error(self) -> str | None:
        return self.info.previous_error

    @property
    def traceparent(self) -> str | None:
        """The task's W3C trace context (see TaskInfo.traceparent). With OpenTelemetry, the
        handler runs inside its span instead: use the current span for your own."""
        return self.info.traceparent

    async def extend_lock(
        self, *, lock_s: float | None = None, lock_ms: int | None = None
    ) -> LockStatus:
        """Hold the task for another `lock_s` seconds (default: its lock duration) from now.
        (`lock_ms` is the older name, in milliseconds.)"""
        seconds = from_ms(lock_s, lock_ms)
        if seconds is not None and seconds <= 0:
            raise ValueError("lock_s must be positive")
        return await self._extend(self.info.lock_ms if seconds is None else max(to_ms(seconds), 1))
