"""A session of its own that LISTENs on a channel (NOTIFY wakes the engine's timer scheduler).

Not a pooled connection: it stays open and idle for the engine's lifetime. Its keepalives
are the engine sessions' (see SessionLimits), so a server or host that vanished shows as a
closed listener within seconds; the caller then opens a new one (and reads again what it may
have missed).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import asyncpg

from orchestrator.store.session import SessionLimits

log = logging.getLogger(__name__)


class Listener:
    def __init__(self, conn: asyncpg.Connection, channel: str) -> None:
        self._conn = conn
        self._channel = channel

    @classmethod
    async def open(
        cls,
        url: str,
        channel: str,
        on_payload: Callable[[str], None],
        *,
        application_name: str,
        limits: SessionLimits | None = None,
        timeout: float = 5.0,
    ) -> Listener:
        settings = {"application_name": application_name[:63]}
        if limits is not None:
            settings.update(limits.server_settings())
        conn = await asyncpg.connect(url, timeout=timeout, server_settings=settings)

        def deliver(_conn: object, _pid: int, _channel: str, payload: str) -> None:
            on_payload(payload)

        try:
            await conn.add_listener(channel, deliver)
        except BaseException:
            conn.terminate()
            raise
        return cls(conn, channel)

    def is_closed(self) -> bool:
        return bool(self._conn.is_closed())

    async def close(self) -> None:
        if self._conn.is_closed():
            return
        try:
            await self._conn.close(timeout=2.0)
        except Exception as exc:  # a connection that went silent: drop it
            log.debug("closing the listener: %r", exc)
            self._conn.terminate()
