from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from orchestrator.engine.retry import GiveUp, RetryLater, after_failure, backoff_ms
from orchestrator.model.definition import RetryPolicy

POLICY = RetryPolicy(
    max_attempts=4,
    initial_backoff_ms=100,
    backoff_coefficient=2,
    max_backoff_ms=1000,
    jitter=0,
    non_retryable_codes=("FATAL",),
)


def fail(**kwargs: object) -> RetryLater | GiveUp:
    args: dict[str, object] = {
        "attempt": 1,
        "retries_left": 3,
        "error_code": None,
        "retries_override": None,
        "delay_override_ms": None,
        "unit_random": 0.5,
    }
    args.update(kwargs)
    return after_failure(POLICY, **args)  # type: ignore[arg-type]


def test_exponential_backoff_is_capped() -> None:
    assert [backoff_ms(POLICY, attempt, 0.5) for attempt in range(1, 6)] == [
        100,
        200,
        400,
        800,
        1000,
    ]


def test_retries_run_out() -> None:
    assert fail(retries_left=3) == RetryLater(100, 2)
    assert fail(retries_left=0) == GiveUp("no retries left")


def test_worker_overrides_win() -> None:
    assert fail(retries_left=0, retries_override=5, delay_override_ms=7) == RetryLater(7, 4)
    assert isinstance(fail(retries_left=3, retries_override=0), GiveUp)


def test_non_retryable_code() -> None:
    assert isinstance(fail(error_code="FATAL"), GiveUp)


@given(st.integers(1, 30), st.floats(0, 0.999))
def test_jitter_stays_in_bounds(attempt: int, unit: float) -> None:
    policy = RetryPolicy(initial_backoff_ms=1000, jitter=0.2, max_backoff_ms=60_000)
    base = min(1000 * 2.0 ** (attempt - 1), 60_000)
    assert base * 0.8 - 1 <= backoff_ms(policy, attempt, unit) <= base * 1.2 + 1
