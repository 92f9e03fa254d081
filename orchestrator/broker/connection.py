"""Connecting to RabbitMQ: a deadline, jittered retries, and a name that shows in the
management UI.

Every wait on the broker is jittered, so that the processes one broker restart disconnected
together do not all knock again in the same instant:
- `connect` tries again, with exponential backoff and full jitter, until its deadline; then it
  raises ServiceUnavailable with the time it tried, the number of attempts and the last error.
  A refused login does not get better by waiting: it fails at once.
- Once connected, the robust connection reconnects by itself (aio-pika) about every
  RECONNECT_INTERVAL_S, jittered. That has no deadline: the engine and the workers outlive a
  broker restart of any length, and decide for themselves what to do meanwhile.
- `retrying` is the same policy for other loops that wait on the broker (a worker's start).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable

import aio_pika
from aio_pika.abc import AbstractRobustConnection
from aiormq.exceptions import ProbableAuthenticationError
from tenacity import AsyncRetrying, RetryCallState, RetryError, retry_if_exception
from tenacity.wait import wait_base, wait_random_exponential
from yarl import URL

from orchestrator.errors import ServiceUnavailable

log = logging.getLogger(__name__)

#: A broker restart costs the engine and workers about this much on top of the restart.
RECONNECT_INTERVAL_S = 1
#: AMQP heartbeat. RabbitMQ drops a connection that stays silent for about two of these and
#: requeues its unacked deliveries: that is how the tasks a frozen process was handed (and
#: had not claimed yet) reach another worker. RabbitMQ's default of 60 s held them a minute.
HEARTBEAT_S = 5
#: How long `connect` keeps trying: a broker started beside the engine (one compose file, a
#: host booting) has this long to answer.
CONNECT_DEADLINE_S = 30.0


class JitteredReconnects(aio_pika.RobustConnection):
    """A robust connection that waits between half and one and a half `reconnect_interval`
    between two reconnect attempts, drawn anew each time: aio-pika reads the attribute for
    every wait (and once more for its log line, which so shows another draw)."""

    @property
    def reconnect_interval(self) -> float:
        return self._interval_s * random.uniform(0.5, 1.5)

    @reconnect_interval.setter
    def reconnect_interval(self, value: float) -> None:
        self._interval_s = float(value)


def backoff(first_s: float, max_s: float) -> wait_base:
    """Exponential backoff with full jitter: the n-th wait is drawn between first_s / 2 and
    first_s * 2**(n-1), capped at max_s."""
    return wait_random_exponential(multiplier=first_s, max=max_s, min=first_s / 2)


def retrying(
    *,
    retry_on: Callable[[BaseException], bool],
    first_s: float,
    max_s: float,
    deadline_s: float | None,
    stop: asyncio.Event | None = None,
    what: str,
) -> AsyncRetrying:
    """Attempts at `what` (named in the log) until one succeeds, `retry_on` refuses its error
    (raised as it is), `stop` is set or `deadline_s` has passed since the first (None: no
    deadline); then tenacity's RetryError, the last attempt inside. The last wait ends at the
    deadline, so the last attempt is made right there; `stop` cuts a wait short."""
    wait = backoff(first_s, max_s)

    def pause(state: RetryCallState) -> float:
        drawn = wait(state)
        if deadline_s is None:
            return drawn
        return max(min(drawn, deadline_s - (state.seconds_since_start or 0.0)), 0.0)

    def give_up(state: RetryCallState) -> bool:
        if stop is not None and stop.is_set():
            return True
        return deadline_s is not None and (state.seconds_since_start or 0.0) >= deadline_s

    async def sleep(seconds: float) -> None:
        if stop is None:
            await asyncio.sleep(seconds)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)

    return AsyncRetrying(
        retry=retry_if_exception(retry_on),
        wait=pause,
        stop=give_up,
        sleep=sleep,
        before_sleep=lambda state: _log_retry(what, state),
    )


def worth_retrying(exc: BaseException) -> bool:
    """Whether waiting may help a connect: a refused, reset or timed-out connection (the
    broker is starting or restarting) may; a refused login or an unknown vhost may not."""
    if isinstance(exc, ServiceUnavailable) and exc.__cause__ is not None:
        exc = exc.__cause__
    if isinstance(exc, ProbableAuthenticationError):
        return False
    return isinstance(exc, OSError | TimeoutError)


async def connect(
    url: str,
    *,
    name: str,
    timeout: float = 5.0,
    heartbeat_s: int = HEARTBEAT_S,
    deadline_s: float = CONNECT_DEADLINE_S,
) -> AbstractRobustConnection:
    """A robust connection: it reconnects and re-declares its consumers by itself. Each
    attempt may take `timeout`; no attempt starts after `deadline_s` (0: a single attempt).
    A `heartbeat` in the URL's query wins over `heartbeat_s`."""
    if "heartbeat=" not in url:
        url += ("&" if "?" in url else "?") + f"heartbeat={heartbeat_s}"
    where = f"RabbitMQ at {_safe(url)}"
    attempts = retrying(
        retry_on=worth_retrying,
        first_s=0.2,
        max_s=5.0,
        deadline_s=deadline_s,
        what=f"connecting to {where}",
    )
    try:
        return await attempts(_connect_once, url, name, timeout)
    except RetryError as gave_up:
        tried = gave_up.last_attempt.attempt_number
        last = gave_up.last_attempt.exception()
        after = f" (gave up after {tried} attempts in {deadline_s:g} s)" if tried > 1 else ""
        raise ServiceUnavailable(f"cannot reach {where}: {last}{after}") from last
    except (OSError, TimeoutError, aio_pika.exceptions.AMQPError) as exc:
        raise ServiceUnavailable(f"cannot connect to {where}: {exc}") from exc


async def _connect_once(url: str, name: str, timeout: float) -> AbstractRobustConnection:
    connection = JitteredReconnects(
        URL(url),
        client_properties={"connection_name": name},
        reconnect_interval=RECONNECT_INTERVAL_S,
    )
    try:
        await asyncio.wait_for(connection.connect(timeout=timeout), timeout + 1)
    except BaseException:
        # Closed, or its reconnect loop would go on trying in the background.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(connection.close(), timeout)
        raise
    return connection


def _log_retry(what: str, state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome is not None else None
    wait_s = state.next_action.sleep if state.next_action is not None else 0.0
    log.warning("%s failed (%s); trying again in %.1f s", what, error, wait_s)


def _safe(url: str) -> str:
    """The URL without its password, for error messages."""
    if "@" not in url:
        return url
    scheme, rest = url.split("://", 1) if "://" in url else ("", url)
    return f"{scheme}://{rest.split('@', 1)[1]}"
