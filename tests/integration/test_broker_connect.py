"""Connecting to a real RabbitMQ: what waiting cannot fix fails at once."""

from __future__ import annotations

import time

import pytest
from yarl import URL

from orchestrator.broker.connection import JitteredReconnects, connect
from orchestrator.errors import ServiceUnavailable
from orchestrator.services import Services

pytestmark = pytest.mark.integration


async def test_a_refused_login_fails_at_once(services: Services) -> None:
    wrong = str(URL(services.amqp_url).with_password("not-the-password"))
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable, match=r"cannot connect to RabbitMQ.*ACCESS_REFUSED"):
        await connect(wrong, name="wrong-password", deadline_s=30)
    assert time.monotonic() - started < 3


async def test_a_connection_reconnects_with_jitter(services: Services) -> None:
    connection = await connect(services.amqp_url, name="jittered")
    try:
        assert isinstance(connection, JitteredReconnects)
        assert not connection.is_closed
    finally:
        await connection.close()
