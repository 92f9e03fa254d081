"""Waits on the broker: jittered, and bounded by a deadline that ends with a clear error."""

from __future__ import annotations

import asyncio
import socket
import time
from types import SimpleNamespace
from typing import Any

import pytest
from aiormq.exceptions import ProbableAuthenticationError
from tenacity import RetryError
from yarl import URL

from orchestrator.broker.connection import JitteredReconnects, backoff, connect, retrying
from orchestrator.config import Settings
from orchestrator.errors import ServiceUnavailable
from workers import TaskContext, Worker


@pytest.fixture
def closed_url() -> str:
    """An AMQP URL whose port nobody listens on: every connect is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"amqp://guest:secret@127.0.0.1:{port}/"


async def test_connect_gives_up_at_its_deadline_with_a_clear_error(closed_url: str) -> None:
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable) as raised:
        await connect(closed_url, name="test", deadline_s=1.0)
    took = time.monotonic() - started
    assert 0.95 <= took < 2.0, took
    message = str(raised.value)
    port = URL(closed_url).port
    assert f"cannot reach RabbitMQ at amqp://127.0.0.1:{port}/" in message
    assert "attempts in 1 s" in message and "secret" not in message
    assert isinstance(raised.value.__cause__, OSError)


async def test_a_zero_deadline_is_one_attempt(closed_url: str) -> None:
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable) as raised:
        await connect(closed_url, name="test", deadline_s=0)
    assert time.monotonic() - started < 0.5
    assert "gave up" not in str(raised.value)


def test_backoff_is_jittered_and_bounded() -> None:
    wait = backoff(0.2, 5.0)
    for attempt, ceiling in [(1, 0.2), (2, 0.4), (3, 0.8), (8, 5.0), (30, 5.0)]:
        state: Any = SimpleNamespace(attempt_number=attempt)
        draws = [wait(state) for _ in range(200)]
        assert all(0.1 <= draw <= ceiling for draw in draws), (attempt, min(draws), max(draws))
        assert len(set(draws)) > 100  # drawn, not fixed: processes do not retry in step


async def test_the_last_attempt_is_made_at_the_deadline() -> None:
    tries: list[float] = []
    started = time.monotonic()

    async def refused() -> None:
        tries.append(time.monotonic() - started)
        raise ConnectionRefusedError("refused")

    attempts = retrying(
        retry_on=lambda exc: isinstance(exc, OSError),
        first_s=0.05,
        max_s=0.3,
        deadline_s=0.7,
        what="test",
    )
    with pytest.raises(RetryError) as raised:
        await attempts(refused)
    assert len(tries) >= 3
    assert 0.68 <= tries[-1] < 0.85, tries
    assert raised.value.last_attempt.attempt_number == len(tries)


async def test_an_error_waiting_cannot_fix_is_raised_at_once() -> None:
    calls = 0

    async def refused_login() -> None:
        nonlocal calls
        calls += 1
        raise ProbableAuthenticationError("ACCESS_REFUSED")

    attempts = retrying(
        retry_on=lambda exc: not isinstance(exc, ProbableAuthenticationError),
        first_s=0.05,
        max_s=0.3,
        deadline_s=10,
        what="test",
    )
    with pytest.raises(ProbableAuthenticationError):
        await attempts(refused_login)
    assert calls == 1


async def test_a_stop_cuts_the_wait_short() -> None:
    stop = asyncio.Event()

    async def refused() -> None:
        asyncio.get_running_loop().call_later(0.1, stop.set)
        raise ConnectionRefusedError("refused")

    attempts = retrying(
        retry_on=lambda exc: True, first_s=30, max_s=30, deadline_s=None, stop=stop, what="t"
    )
    started = time.monotonic()
    with pytest.raises(RetryError):
        await attempts(refused)
    assert time.monotonic() - started < 1


def test_reconnect_waits_are_jittered_around_the_interval() -> None:
    connection = JitteredReconnects(URL("amqp://guest:guest@127.0.0.1:1/"), reconnect_interval=2)
    draws = [connection.reconnect_interval for _ in range(200)]
    assert all(1.0 <= draw <= 3.0 for draw in draws)
    assert len(set(draws)) > 100


def idle_worker(url: str, **options: Any) -> Worker:
    worker = Worker("retries", settings=Settings(amqp_url=url), **options)

    @worker.task("nothing")
    async def nothing(task: TaskContext) -> None:
        return None

    return worker


async def test_a_worker_that_cannot_reach_the_broker_gives_up_at_its_deadline(
    closed_url: str,
) -> None:
    worker = idle_worker(closed_url, start_deadline_s=1.0)
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable, match=r"could not start within 1 s \(\d+ attempts\)"):
        async with worker:
            pytest.fail("the worker started without a broker")
    assert 0.95 <= time.monotonic() - started < 2.5
    assert worker._connection is None


async def test_a_stop_ends_the_start_attempts_of_a_worker_without_a_deadline(
    closed_url: str,
) -> None:
    worker = idle_worker(closed_url, start_deadline_s=None)
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.8, stop.set)
    started = time.monotonic()
    await asyncio.wait_for(worker.run_until(stop), 5)
    assert time.monotonic() - started < 2
    assert worker._connection is None


async def test_a_worker_that_was_shut_down_does_not_start_again(closed_url: str) -> None:
    worker = idle_worker(closed_url)
    await worker.shutdown()
    with pytest.raises(RuntimeError, match="runs once"):
        async with worker:
            pass


async def test_a_worker_without_handlers_is_not_retried() -> None:
    with pytest.raises(ValueError, match="no handlers"):
        async with Worker("empty", start_deadline_s=30):
            pass
