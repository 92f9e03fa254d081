"""Running a unit of work in a transaction, waiting out a database that is away."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg

log = logging.getLogger(__name__)
T = TypeVar("T")


class NeedsLocks(Exception):
    """Work tried in one autocommit statement needs the locked way after all: something in
    it is not known to this engine. Raised before anything is written."""


#: Errors after which the same transaction can simply be tried again.
RETRYABLE = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
    asyncpg.AdminShutdownError,
    asyncpg.TooManyConnectionsError,
    # asyncpg's word for a connection the server dropped mid-operation.
    asyncpg.InternalClientError,
)


async def in_transaction(
    pool: asyncpg.Pool,
    work: Callable[[asyncpg.Connection], Awaitable[T]],
    *,
    stop: asyncio.Event | None = None,
) -> T:
    """Run `work` in a transaction; on a lost connection or a deadlock, wait and run it again.

    While the database is away the caller holds its messages unacked, so nothing is lost and
    nothing spins: the broker stops delivering once the prefetch window is full.
    """
    delay = 0.05
    while True:
        try:
            async with pool.acquire() as conn, conn.transaction():
                return await work(conn)
        except RETRYABLE as exc:
            if stop is not None and stop.is_set():
                raise
            log.warning(
                "database unavailable (%s: %s); retrying in %.2fs", type(exc).__name__, exc, delay
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
