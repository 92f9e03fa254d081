"""Connecting to RabbitMQ with a deadline and a name that shows in the management UI."""

from __future__ import annotations

import asyncio

import aio_pika
from aio_pika.abc import AbstractRobustConnection

from orchestrator.errors import ServiceUnavailable

#: A broker restart costs the engine and workers about this much on top of the restart.
RECONNECT_INTERVAL_S = 1
#: AMQP heartbeat. RabbitMQ drops a connection that stays silent for about two of these and
#: requeues its unacked deliveries: that is how the tasks a frozen process was handed (and
#: had not claimed yet) reach another worker. RabbitMQ's default of 60 s held them a minute.
HEARTBEAT_S = 5


async def connect(
    url: str, *, name: str, timeout: float = 5.0, heartbeat_s: int = HEARTBEAT_S
) -> AbstractRobustConnection:
    """A robust connection: it reconnects and re-declares its consumers by itself. A
    `heartbeat` in the URL's query wins over `heartbeat_s`."""
    if "heartbeat=" not in url:
        url += ("&" if "?" in url else "?") + f"heartbeat={heartbeat_s}"
    try:
        return await asyncio.wait_for(
            aio_pika.connect_robust(
                url,
                client_properties={"connection_name": name},
                timeout=timeout,
                reconnect_interval=RECONNECT_INTERVAL_S,
            ),
            timeout=timeout + 1,
        )
    except (OSError, TimeoutError, aio_pika.exceptions.AMQPError) as exc:
        raise ServiceUnavailable(f"cannot reach RabbitMQ at {_safe(url)}: {exc}") from exc


def _safe(url: str) -> str:
    """The URL without its password, for error messages."""
    if "@" not in url:
        return url
    scheme, rest = url.split("://", 1) if "://" in url else ("", url)
    return f"{scheme}://{rest.split('@', 1)[1]}"
