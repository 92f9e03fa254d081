"""Exceptions a handler raises to say how its task ended."""

from __future__ import annotations

from typing import Any

from workers._durations import from_ms, to_ms


class BpmnError(Exception):
    """A business outcome, not a technical failure: routed to the task's error boundary event
    whose code matches (an incident when none does). Never retried."""

    def __init__(
        self, code: str, message: str | None = None, variables: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message or code)
        self.code = code
        self.message = message
        self.variables = variables or {}


class TaskFailure(Exception):
    """A technical failure that says how to retry: `retries` left (0 raises an incident) and
    `retry_delay_s` (seconds) override the definition's policy; `error_code` may be
    non-retryable there. `retry_delay_ms` is the older name of the delay, in milliseconds.
    Any other exception is a failure under the definition's policy."""

    def __init__(
        self,
        message: str,
        *,
        retries: int | None = None,
        retry_delay_s: float | None = None,
        error_code: str | None = None,
        details: str | None = None,
        retry_delay_ms: int | None = None,
    ) -> None:
        super().__init__(message)
        self.retries = retries
        self.retry_delay_s = from_ms(retry_delay_s, retry_delay_ms)
        if self.retry_delay_s is not None and self.retry_delay_s < 0:
            raise ValueError("retry_delay_s must not be negative")
        self.error_code = error_code
        self.details = details

    @property
    def retry_delay_ms(self) -> int | None:
        """The delay as the wire carries it."""
        return None if self.retry_delay_s is None else to_ms(self.retry_delay_s)


class LockLost(Exception):
    """extend_lock got no answer in time; the worker should assume it may not hold the task."""
