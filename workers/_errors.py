"""Exceptions a handler raises to say how its task ended."""

from __future__ import annotations

from typing import Any


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
    `retry_delay_ms` override the definition's policy; `error_code` may be non-retryable there.
    Any other exception is a failure under the definition's policy."""

    def __init__(
        self,
        message: str,
        *,
        retries: int | None = None,
        retry_delay_ms: int | None = None,
        error_code: str | None = None,
        details: str | None = None,
    ) -> None:
        super().__init__(message)
        self.retries = retries
        self.retry_delay_ms = retry_delay_ms
        self.error_code = error_code
        self.details = details


class LockLost(Exception):
    """extend_lock got no answer in time; the worker should assume it may not hold the task."""
