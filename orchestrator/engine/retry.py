"""What happens to a task after a failed attempt: a retry at some delay, or an incident."""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.model.definition import RetryPolicy


@dataclass(frozen=True)
class RetryLater:
    delay_ms: int
    retries_left: int


@dataclass(frozen=True)
class GiveUp:
    reason: str


def backoff_ms(policy: RetryPolicy, attempt: int, unit_random: float) -> int:
    """Exponential backoff for the retry after `attempt`, with jitter; unit_random in [0, 1)."""
    base = policy.initial_backoff_ms * policy.backoff_coefficient ** max(attempt - 1, 0)
    capped = min(base, float(policy.max_backoff_ms))
    spread = capped * policy.jitter * (2.0 * unit_random - 1.0)
    return max(0, round(capped + spread))


def after_failure(
    policy: RetryPolicy,
    *,
    attempt: int,
    retries_left: int,
    error_code: str | None,
    retries_override: int | None,
    delay_override_ms: int | None,
    unit_random: float,
) -> RetryLater | GiveUp:
    if error_code is not None and error_code in policy.non_retryable_codes:
        return GiveUp(f"error code {error_code!r} is not retryable")
    # Like Camunda's `retries`: the number of attempts still allowed, 0 meaning "incident".
    available = retries_override if retries_override is not None else retries_left
    if available <= 0:
        return GiveUp("no retries left")
    delay = delay_override_ms
    if delay is None:
        delay = backoff_ms(policy, attempt, unit_random)
    return RetryLater(delay, available - 1)
